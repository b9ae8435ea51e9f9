"""What the tests and the benchmarks share: real Redis, Celery worker and API processes
(``stack``) and models rewritten for Captum references (``captum``)."""
