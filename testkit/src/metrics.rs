//! A Prometheus text exposition, parsed: what a test reads from a `/metrics` endpoint.

use std::collections::BTreeMap;

/// One scrape of a `/metrics` endpoint.
pub struct Scrape {
    /// The text as served (for panic messages).
    pub text: String,
    samples: Vec<Sample>,
}

struct Sample {
    /// The series as written: name and labels (`name{a="b"}`).
    series: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Scrape {
    /// Parses a text exposition (every line not a comment is `series value`).
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let value: f64 = value.parse().expect("a number");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair.split_once("=\"").expect("key=\"value\"");
                            (key.to_owned(), value.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), BTreeMap::new()),
            };
            samples.push(Sample {
                series: series.to_owned(),
                name,
                labels,
                value,
            });
        }
        Self {
            text: text.to_owned(),
            samples,
        }
    }

    /// The sum of the samples of `name` whose labels include `labels` (`None`: no such series).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// Like [`Scrape::get`], 0 when the series does not exist yet.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The value of one series exactly as the exposition writes it (`name{a="b"}`), 0 when it
    /// does not exist yet.
    pub fn series(&self, series: &str) -> f64 {
        self.samples
            .iter()
            .find(|s| s.series == series)
            .map_or(0.0, |s| s.value)
    }
}
