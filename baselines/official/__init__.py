"""The methods' official implementations as references: the seeded inputs they were run on (:mod:`.inputs`) and the
recorders that run the authors' code, read from a clone of their repository at a pinned commit, on those inputs
(:mod:`.record`; ``scripts/official_fixtures.py``). The recorded outputs are tests/fixtures/official/*.json, compared
with ours by tests/test_methods_2025.py and tests/test_llava_next.py. Not a method: the registry does not scan
subpackages of ``baselines``."""
