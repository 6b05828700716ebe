"""Benchmarks for tenant_gateway, run from the repository as ``python -m benchmarks.<name>``
(``benchmarks/README.md``), and the server launcher (``launch``) and HTTP load (``load``) that
they and the tests share."""
