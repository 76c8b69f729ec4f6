"""Shared fixtures: real servers on 127.0.0.1, started by the tests themselves."""

pytest_plugins = [
    "tests.fixtures.s3",
    "tests.fixtures.postgres",
    "tests.fixtures.dcmtk",
    "tests.fixtures.server",
    "tests.fixtures.browser",
]
