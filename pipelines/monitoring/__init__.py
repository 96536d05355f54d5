"""Monitoring: drift statistics of the served scores (pure) and their report."""
