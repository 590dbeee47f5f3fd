"""The built-in OSUM tasks. Each module is a plugin registered under the ``osum`` entry-point group, exactly
as a third-party task would be; osum_core never imports this package."""
