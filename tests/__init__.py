"""The test suite. Before anything imports PyTorch: its OpenMP threads sleep while they wait
instead of spinning, as the tests share two cores with the servers and workers they start and
spinning threads took each other's cores (the digits CNN trained in 170 s instead of 6 s on a
loaded 2-core machine). Subprocesses the tests start inherit the setting."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
