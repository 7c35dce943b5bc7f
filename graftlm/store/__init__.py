"""Control-plane store: SQLAlchemy models, Alembic migrations, content-addressed blobs."""
