"""Runnable circuit-discovery scripts built on mechlab's public API.

python -m circuits.ioi --model smollm2 --out out/ioi
"""
