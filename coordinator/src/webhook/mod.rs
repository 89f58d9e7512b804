//! Webhooks: signed, journaled, retried deliveries of job outcomes.
