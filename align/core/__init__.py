"""Foundations every other package uses: the one error type users see (`AlignError`), atomic
file writes, content hashes and locks, and per-process set-up (threads, heap). Imports nothing
else of align.
"""
