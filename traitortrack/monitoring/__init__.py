"""Watching the system breathe: Prometheus metrics, the workers' live samples, their history.

``prometheus`` holds the metrics a scrape reads, ``probes`` what every request and scan
records as it happens, ``monitor`` the once-a-second sample each worker takes and shares, and
``multiprocess`` the start-up and clean-up that make a scrape correct across workers.
"""
