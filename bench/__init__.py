"""The benchmarks behind the efficiency tables and the GPU check: Table 2's compute (:mod:`bench.flops_table`),
Table 3's latency (:mod:`bench.latency`) and throughput (:mod:`bench.throughput`), what sweeps gain from sharing an
image's work (:mod:`bench.sweep_throughput`, :mod:`bench.sweep_reuse`), the 7B-geometry runs of each family
(:mod:`bench.real_geometry`, :mod:`bench.qwen25vl`, :mod:`bench.llava_next_geometry`), half-precision agreement
(:mod:`bench.precision`) and the prepared GPU check (:mod:`bench.gpu_check`), with the models they measure
(:mod:`bench.models`). Timing and probing live in :mod:`svdprune.timing` and :mod:`svdprune.probing`, beside the
FLOPs and memory models. The command lines are the scripts of the same names in ``scripts/``."""
