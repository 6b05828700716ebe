"""Throughput and latency benchmarks for tenant_gateway (run ``benchmarks/run.py``)."""
