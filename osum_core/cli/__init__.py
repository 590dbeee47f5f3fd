"""The ``osum`` command line: config -> objects -> Trainer."""
