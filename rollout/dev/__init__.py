"""Development tools, not used in production: a local server speaking SendGrid's v3 API
(`rollout dev sendgrid`, and the tests' SendGrid)."""
