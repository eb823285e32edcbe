"""The real gateway (`python -m gateway.cli run`) as a child process for tests.

It lives in gateway.localnet, shared with the benchmarks and the demo; this module keeps the
suites' `from gateway_proc import GatewayProcess`.
"""
from gateway.localnet import GatewayProcess

__all__ = ["GatewayProcess"]
