"""Batched prediction, scoring and reports: what ``osum fit``'s test, ``osum test`` and ``osum predict`` share."""
