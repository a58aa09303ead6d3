-- A final command's reason is a code and nothing else (the contract's Reason: a domain
-- rejection, an intake refusal or a failure code); what people read about a failure is its
-- detail. Until now a failed command kept its sentence in reason: that sentence becomes the
-- detail, and its code, which was never stored, is 'unclassified'.
alter table commands add column detail text;

update commands set detail = reason, reason = 'unclassified'
 where status = 'failed' and reason is not null;

alter table commands
    add constraint commands_reason_is_a_code check (reason ~ '^[a-z][a-z_]*$');
