"""The shipped systemd units (etc/systemd/), read as the etc/ tests need them.

``service_settings(path)`` is a unit's [Service] section as a dict;
``exec_args(path, port="0")`` its command line after the .pyz, as systemd
runs it with no EnvironmentFile, with flags' values replaced where a test must
(a free port, loopback).
"""

import os
import shlex

from conftest import systemd_words
from serverproc import ROOT

SYSTEMD = os.path.join(ROOT, "etc", "systemd")
SERVE_UNIT = os.path.join(SYSTEMD, "spelltraction.service")
GAME_UNIT = os.path.join(SYSTEMD, "spelltraction-game.service")
GATEWAY_UNIT = os.path.join(SYSTEMD, "spelltraction-gateway@.service")
UNITS = sorted(os.path.join(SYSTEMD, name) for name in os.listdir(SYSTEMD))
SERVICES = [path for path in UNITS if path.endswith(".service")]  # a timer has no [Service]
PYZ = "/opt/spelltraction/spelltraction.pyz"  # where the units run the bundle from


def service_settings(path):
    """The [Service] settings, the first of each key (ExecStart and friends once each)."""
    found, section = {}, ""
    for line in open(path).read().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and line[0] not in "#;" and section == "Service":
            key, _, value = line.partition("=")
            found.setdefault(key, value)
    return found


def exec_args(path, **replace):
    """A unit's ExecStart as a list, from its subcommand on; each ``replace``
    keyword sets a flag's value (``admin_port="0"``: ``--admin-port 0``)."""
    argv = systemd_words(shlex.split(service_settings(path)["ExecStart"]))  # no EnvironmentFile
    args = argv[argv.index(PYZ) + 1:]
    for name, value in replace.items():
        args[args.index("--" + name.replace("_", "-")) + 1] = value
    return args
