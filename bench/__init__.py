"""fastattn's benchmarks: one harness, one script per op, end-to-end model runs, and the GPU check.

Installed as the subpackage ``fastattn.bench`` (setup.py maps this folder to it, as it maps
``kernels/`` to ``fastattn.kernels``); run through ``python -m fastattn bench --help``.

    harness.py      timing (do_bench on a GPU, a perf_counter loop on a CPU), cases, providers, the grid
    metrics.py      the FLOP and byte formulas, in one place
    attention.py    attention TFLOP/s;  norm.py: LayerNorm/RMSNorm GB/s;  sampling.py: µs per batch
    models.py       GPT train step and generation, tokens/s
    overhead.py     the cost of fastattn's dispatch against calling PyTorch directly
    memory.py       peak GPU memory of attention against the sequence length
    report.py, plot.py, cli.py   tables, JSON, Markdown, PNG and the command line
    gpu_check.py    ``make gpu-check``: build, tests, verify, benchmarks and checks on a GPU machine
    test_*.py       the same benchmarks as pytest-benchmark suites: ``pytest bench/ --benchmark-only``
    results/        recorded runs
"""
