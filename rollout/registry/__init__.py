"""The registry database: models, engine, migrations and set-based actions."""
