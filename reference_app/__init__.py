"""The book-rental reference app that scalesim deploys, loads and models, stage by stage.

Users log in, browse a catalog of books, look at a book, rent it and return it, and check what
their rentals cost. The same code runs in every stage of the scaling guide; the stage's flags in
``SCALESIM_APP_CONFIG`` only decide where sessions live, whether joins run in SQL or in the app,
which caches sit in front of the database, where reads go and whether charges are precomputed.

The modules, from the bottom up:

* ``config`` -- :class:`~reference_app.config.AppConfig`, the JSON configuration and its checks;
* ``charges`` -- the pure arithmetic of what a rental costs;
* ``passwords`` -- salted PBKDF2 hashes with their parameters stored inside;
* ``schema`` -- the tables (SQLAlchemy Core), normalized plus the denormalized copies stage2 reads;
* ``queries`` -- every SQL statement, compiled once to asyncpg's ``$n`` form;
* ``db`` -- connection pools, read routing over replicas, read-your-writes;
* ``sessions`` -- session tokens (memory or key-value) and each user's write mark;
* ``cache`` -- the query cache and the profile object cache (stage3);
* ``service`` -- what each request does, independent of HTTP;
* ``app`` -- the Starlette app uvicorn runs (``reference_app.app:create_app --factory``);
* ``workers`` -- arq jobs that refresh profiles and fold charges (``python -m reference_app.workers``);
* ``seed`` -- the schema and deterministic seed data (``python -m reference_app.seed``).

``docs/api.md`` describes the HTTP API and the design decisions behind it. Importing the package
(or any of its modules) has no side effects: nothing connects, reads the environment or compiles
SQL until an app, worker or seed is actually started.
"""
