"""The peer benchmark: wrk from the client namespace against `direct`, the peer load balancers
(nginx, HAProxy) and Miresga on the VIP; reports and plots the results."""

from miresga.bench.runner import BenchError, run_bench
from miresga.bench.systems import System, systems_from_status
from miresga.bench.workloads import Workload, build_workloads, mix_workload, size_workload, workload_by_name

__all__ = ["BenchError", "run_bench", "System", "systems_from_status", "Workload", "build_workloads",
           "mix_workload", "size_workload", "workload_by_name"]
