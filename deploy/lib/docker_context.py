#!/usr/bin/env python3
"""Assemble a Dockerfile's build context the way `docker build` would, without a Docker engine.

Used by deploy/check-docker-context.sh. Reads the Dockerfile's build stage (the stage whose RUN
runs `cargo build`): its WORKDIR, ENV and COPY instructions (those without --from), and the
ignore file BuildKit would use (<Dockerfile>.dockerignore beside the Dockerfile, else
.dockerignore at the context root), then copies into OUT exactly the files those COPY lines
would put under WORKDIR, leaving out what the ignore file excludes. Nothing is hard-coded: a COPY
line or an ignore rule that changes changes what is copied.

    docker_context.py assemble CONTEXT DOCKERFILE OUT    copy; print the build stage's ENV and
                                                         cargo command (one JSON object)
    docker_context.py self-test                          check the ignore-pattern matcher

Ignore rules follow moby's patternmatcher (what BuildKit uses): one pattern a line, `#` comments,
a leading `!` re-includes, the last matching pattern decides, a pattern matching a directory
matches everything under it, `*` and `?` stop at `/`, `**` crosses directories.
"""

import json
import os
import posixpath
import re
import shlex
import shutil
import sys


# ---- .dockerignore -------------------------------------------------------------------------------


class Pattern:
    def __init__(self, text):
        self.exclusion = text.startswith("!")
        if self.exclusion:
            text = text[1:].strip()
        text = posixpath.normpath(text.lstrip("/")) if text else text
        self.text = text
        self.regex = re.compile(_to_regex(text))

    def matches(self, path):
        """The pattern matches `path` or one of its parent directories (moby's
        MatchesOrParentMatches)."""
        if self.regex.fullmatch(path):
            return True
        parts = path.split("/")
        return any(self.regex.fullmatch("/".join(parts[:i])) for i in range(1, len(parts)))


def _to_regex(pattern):
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 1
                if i + 1 < n and pattern[i + 1] == "/":
                    # `**/`: zero or more whole directories.
                    i += 1
                    out.append("(?:.*/)?")
                else:
                    out.append(".*")
            else:
                out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                raise ValueError(f"unterminated [ in ignore pattern {pattern!r}")
            body = pattern[i + 1 : j]
            if body.startswith("^") or body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


class IgnoreRules:
    def __init__(self, lines):
        self.patterns = []
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            pattern = Pattern(line)
            if pattern.text in ("", "."):
                continue
            self.patterns.append(pattern)

    @classmethod
    def for_dockerfile(cls, context, dockerfile):
        beside = dockerfile + ".dockerignore"
        root = os.path.join(context, ".dockerignore")
        for candidate in (beside, root):
            if os.path.isfile(candidate):
                with open(candidate, encoding="utf-8") as f:
                    return cls(f.read().splitlines()), candidate
        return cls([]), None

    def excluded(self, path):
        verdict = False
        for pattern in self.patterns:
            if pattern.matches(path):
                verdict = not pattern.exclusion
        return verdict

    def may_reinclude_under(self, directory):
        """Could a `!` pattern re-include something below an excluded `directory`? (Lets the
        walk skip target/ and .git/ instead of visiting every file in them.)"""
        for pattern in self.patterns:
            if not pattern.exclusion:
                continue
            literal = re.split(r"[*?\[\\]", pattern.text, maxsplit=1)[0]
            if literal == "":  # starts with a wildcard: could match anywhere
                return True
            if literal.startswith(directory + "/") or (directory + "/").startswith(literal):
                return True
        return False


def context_files(context, rules):
    """Every regular file (and symlink) of the context that the ignore rules let through,
    as paths relative to the context, with `/` separators."""
    found = []
    for root, dirs, files in os.walk(context):
        rel_root = os.path.relpath(root, context).replace(os.sep, "/")
        rel_root = "" if rel_root == "." else rel_root
        kept = []
        for d in sorted(dirs):
            rel = f"{rel_root}/{d}" if rel_root else d
            if rules.excluded(rel) and not rules.may_reinclude_under(rel):
                continue
            kept.append(d)
        dirs[:] = kept
        for name in sorted(files):
            rel = f"{rel_root}/{name}" if rel_root else name
            if not rules.excluded(rel):
                found.append(rel)
    return found


# ---- Dockerfile --------------------------------------------------------------------------------


def instructions(dockerfile):
    """(KEYWORD, argument text) for each instruction, continuation lines joined."""
    with open(dockerfile, encoding="utf-8") as f:
        lines = f.read().splitlines()
    result, current = [], ""
    for line in lines:
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        result.append((keyword.upper(), rest.strip()))
        current = ""
    if current:
        keyword, _, rest = current.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def build_stage(dockerfile):
    """The instructions of the stage whose RUN invokes `cargo build`."""
    stages, stage = [], None
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            stage = []
            stages.append(stage)
        elif stage is not None:
            stage.append((keyword, rest))
    for stage in stages:
        if any(k == "RUN" and "cargo build" in rest for k, rest in stage):
            return stage
    raise SystemExit(f"{dockerfile}: no stage runs `cargo build`")


def parse_env(rest):
    words = shlex.split(rest)
    if len(words) >= 2 and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}  # legacy `ENV KEY value`
    env = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise SystemExit(f"cannot read ENV {rest!r}")
        env[key] = value
    return env


def parse_copy(rest):
    """(sources, destination) of a COPY, or None for a COPY --from (another stage or image)."""
    if rest.startswith("["):
        words = json.loads(rest)
    else:
        words = shlex.split(rest)
    flags = [w for w in words if w.startswith("--")]
    words = [w for w in words if not w.startswith("--")]
    if any(f.startswith("--from") for f in flags):
        return None
    if len(words) < 2:
        raise SystemExit(f"cannot read COPY {rest!r}")
    return words[:-1], words[-1]


def cargo_command(stage):
    for keyword, rest in stage:
        if keyword == "RUN" and "cargo build" in rest:
            # The cargo invocation is the first command of the RUN (up to `&&`, `;` or `|`).
            first = re.split(r"&&|;|\|", rest, maxsplit=1)[0]
            return shlex.split(first)
    raise AssertionError("unreachable")


def assemble(context, dockerfile, out):
    context = os.path.abspath(context)
    rules, ignore_file = IgnoreRules.for_dockerfile(context, os.path.abspath(dockerfile))
    files = context_files(context, rules)
    stage = build_stage(dockerfile)
    workdir, env, copied = "/", {}, 0
    for keyword, rest in stage:
        if keyword == "WORKDIR":
            workdir = posixpath.join(workdir, rest)
        elif keyword == "ENV":
            env.update(parse_env(rest))
        elif keyword in ("COPY", "ADD"):
            parsed = parse_copy(rest)
            if parsed is None:
                continue
            sources, dest = parsed
            copied += copy_sources(context, files, sources, workdir, dest, out)
    if workdir == "/":
        raise SystemExit(f"{dockerfile}: the build stage sets no WORKDIR")
    return {
        "ignore_file": ignore_file,
        "workdir": workdir,
        "env": env,
        "cargo": cargo_command(stage),
        "files": copied,
    }


def copy_sources(context, files, sources, workdir, dest, out):
    """Copy what `COPY sources... dest` would, from the filtered context, to OUT (which stands for
    WORKDIR). Only destinations inside WORKDIR are supported (the build sees nothing else)."""
    target = posixpath.normpath(posixpath.join(workdir, dest))
    if target != workdir and not target.startswith(workdir.rstrip("/") + "/"):
        raise SystemExit(f"COPY destination {dest!r} is outside WORKDIR {workdir}")
    target_rel = posixpath.relpath(target, workdir)
    into_dir = dest.endswith("/") or len(sources) > 1
    copied = 0
    for source in sources:
        source = posixpath.normpath(source.lstrip("/"))
        regex = re.compile(_to_regex(source))
        hits = [f for f in files if regex.fullmatch(f)]
        under = [f for f in files if source == "." or f.startswith(source + "/")]
        if hits:  # files (a literal name or a wildcard)
            for f in hits:
                name = posixpath.basename(f)
                rel = posixpath.join(target_rel, name) if (into_dir or len(hits) > 1) else target_rel
                copy_file(context, f, out, rel)
                copied += 1
        elif under:  # a directory: its contents go into the destination
            for f in under:
                inner = f if source == "." else f[len(source) + 1 :]
                copy_file(context, f, out, posixpath.join(target_rel, inner))
                copied += 1
        else:
            raise SystemExit(
                f"COPY {source}: nothing in the build context matches it "
                "(missing, or excluded by the ignore file): `docker build` fails here too"
            )
    return copied


def copy_file(context, rel, out, dest_rel):
    dest = os.path.normpath(os.path.join(out, dest_rel))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    # copy2 keeps mtimes, so cargo sees an unchanged file as unchanged on the next run.
    shutil.copy2(os.path.join(context, rel), dest, follow_symlinks=True)


# ---- self-test ---------------------------------------------------------------------------------


def self_test():
    rules = IgnoreRules(["# c", "*", "!Cargo.toml", "!domain", "!bench", "**/target", "!keep/**/x.txt"])
    cases = {
        "Cargo.toml": False,
        "Cargo.lock": True,
        "README.md": True,
        "domain/src/lib.rs": False,
        "domain/target/debug/x": True,
        "bench/src/main.rs": False,
        "target/debug/orderflow-api": True,
        ".git/HEAD": True,
        "keep/a/b/x.txt": False,
        "keep/a/b/y.txt": True,
    }
    bad = [(p, want) for p, want in cases.items() if rules.excluded(p) != want]
    assert not rules.may_reinclude_under("target"), "target/ must be skipped"
    assert rules.may_reinclude_under("keep"), "keep/ holds a re-included file"
    assert re.fullmatch(_to_regex("*.toml"), "Cargo.toml")
    assert not re.fullmatch(_to_regex("*.toml"), "api/Cargo.toml")
    assert re.fullmatch(_to_regex("**/*.rs"), "a/b/c.rs") and re.fullmatch(_to_regex("**/*.rs"), "c.rs")
    if bad:
        raise SystemExit(f"ignore matcher wrong for: {bad}")
    print("docker_context self-test: ok")


def main(argv):
    if argv[1:2] == ["self-test"]:
        self_test()
    elif argv[1:2] == ["assemble"] and len(argv) == 5:
        print(json.dumps(assemble(argv[2], argv[3], argv[4])))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
