"""The parts of bench/gateway_load.py: the fleet of simulated cars and stations that makes
the load (`fleet`), the echo responder that gives the baseline (`echo`), the gateway and the
echo as child processes on one configuration (`responders`), the workload (`workload`), and
the CPU each process uses (`cpu`)."""
