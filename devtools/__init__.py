"""Developer tooling, not part of the installed product: private Postfix, clamd and
Dovecot instances on loopback for `make run`, the tests and the benchmarks."""
