"""Jobs: what the API and the workers share. Settings, job records and their stores, the
artifact store, the job runner and the Celery app. Imports neither ``service`` nor
``workers`` (checked by ``lint-imports``)."""
