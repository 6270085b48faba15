"""Data on disk: datasets read into K-wise records, record shards, the pairing rule that turns
K-wise records into preference pairs, the quickstart data, and the FastChat / AlpacaEval file
layouts the judge reads.
"""
