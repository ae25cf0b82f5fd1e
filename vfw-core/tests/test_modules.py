"""Plugin discovery across real distribution boundaries (fake installed distributions)."""

from __future__ import annotations

import marshal
import os
import time

from vfw.modules import known_provider


def test_one_lookup_imports_only_the_providing_plugin(fake_site, make_plugin):
    make_plugin("vfw-dev-good", "good_pkg", "good-dev")
    # A plugin whose import would fail: it must never be imported for an unrelated type.
    fake_site.add("vfw-dev-broken", "0.3", {"broken_pkg/__init__.py": 'VFW_API = "1.0"\n',
                                            "broken_pkg/dev.py": "raise ImportError('boom')\n"},
                  "broken_pkg", {"broken-dev": "broken_pkg.dev"})
    r = fake_site.python("""
        import sys
        from vfw.qom import object_new
        dev = object_new("good-dev")
        print(dev.type_name, dev.level)
        print("broken imported:", any(m.startswith("broken_pkg") for m in sys.modules))
        print("good imported:", "good_pkg.dev" in sys.modules)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["good-dev 3", "broken imported: False", "good imported: True"]


def test_broken_plugin_is_reported_and_unrelated_types_keep_working(test_board, make_plugin):
    fake_site = test_board
    make_plugin("vfw-dev-good", "good_pkg", "good-dev")
    fake_site.add("vfw-dev-broken", "0.3", {"broken_pkg/__init__.py": 'VFW_API = "1.0"\n',
                                            "broken_pkg/dev.py": "import no_such_module_xyz\n"},
                  "broken_pkg", {"broken-dev": "broken_pkg.dev"})
    r = fake_site.vfw("run", "-M", "testboard", "-accel", "null", "-device", "broken-dev")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "vfw: -device broken-dev: plugin vfw-dev-broken 0.3 failed to load module"
        " 'broken_pkg.dev': ModuleNotFoundError: No module named 'no_such_module_xyz'"]
    r = fake_site.vfw("run", "-device", "good-dev,help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["good-dev options:", "  level=<uint32> - a level (default: 3)"]
    r = fake_site.vfw("plugins")
    assert r.returncode == 0
    assert "vfw-dev-broken 0.3 [error]" in r.stdout
    assert "error: plugin vfw-dev-broken 0.3 failed to load module 'broken_pkg.dev'" in r.stdout
    assert "vfw-dev-good 1.0 [loaded]" in r.stdout
    r = fake_site.vfw("run", "-device", "help")
    assert r.returncode == 0
    assert 'name "good-dev", desc "a test device", from vfw-dev-good 1.0' in r.stdout


def test_declared_but_not_registered(test_board):
    fake_site = test_board
    fake_site.add("vfw-dev-liar", "2.1", {"liar/__init__.py": 'VFW_API = "1.0"\n',
                                         "liar/dev.py": "X = 1\n"},
                  "liar", {"liar-dev": "liar.dev"})
    r = fake_site.vfw("run", "-M", "testboard", "-accel", "null", "-device", "liar-dev")
    assert r.returncode == 1
    assert ("plugin vfw-dev-liar 2.1 declares type 'liar-dev' but its module 'liar.dev' does"
            " not register it") in r.stderr


def test_registered_but_not_declared_is_refused_and_declared_types_still_work(fake_site):
    source = """
        from vfw.qdev import Device
        from vfw.qom import register_type

        @register_type
        class A(Device):
            TYPE = "declared-dev"

        @register_type
        class B(Device):
            TYPE = "sneaky-dev"
    """
    fake_site.add("vfw-dev-sneaky", "0.9", {"sneaky/__init__.py": 'VFW_API = "1.0"\n',
                                           "sneaky/dev.py": source},
                  "sneaky", {"declared-dev": "sneaky.dev"})
    r = fake_site.python("""
        from vfw.qom import object_new, TABLE
        from vfw.errors import TypeLookupError
        print(object_new("declared-dev").type_name)
        try:
            object_new("sneaky-dev")
        except TypeLookupError as e:
            print("refused:", e)
    """)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "declared-dev"
    assert lines[1] == ("refused: plugin vfw-dev-sneaky 0.9 registers type 'sneaky-dev' that its"
                        " entry points do not declare (module sneaky.dev)")


def test_incompatible_api_version_names_distribution(test_board, make_plugin):
    fake_site = test_board
    make_plugin("vfw-dev-future", "future_pkg", "future-dev", version="5.0", api="2.0")
    make_plugin("vfw-dev-newer-minor", "minor_pkg", "minor-dev", api="1.99")
    make_plugin("vfw-dev-good", "good_pkg", "good-dev")
    r = fake_site.vfw("run", "-M", "testboard", "-accel", "null", "-device", "future-dev")
    assert r.returncode == 1
    assert ("plugin vfw-dev-future 5.0 targets vfw API 2.0, but vfw-core 0.1.0 provides API 1.0"
            in r.stderr)
    r = fake_site.vfw("run", "-M", "testboard", "-accel", "null", "-device", "minor-dev")
    assert "targets vfw API 1.99" in r.stderr
    r = fake_site.vfw("run", "-device", "good-dev,help")
    assert r.returncode == 0


def test_missing_api_declaration(test_board):
    fake_site = test_board
    fake_site.add("vfw-dev-noapi", "1.0", {"noapi/__init__.py": "", "noapi/dev.py": "X = 1\n"},
                  "noapi", {"noapi-dev": "noapi.dev"})
    r = fake_site.vfw("run", "-M", "testboard", "-accel", "null", "-device", "noapi-dev")
    assert "plugin vfw-dev-noapi 1.0 does not declare the vfw API it targets" in r.stderr


def test_duplicate_type_across_distributions_names_both(fake_site, make_plugin):
    make_plugin("vfw-dev-one", "one_pkg", "twin-dev")
    make_plugin("vfw-dev-two", "two_pkg", "twin-dev")
    r = fake_site.python("""
        from vfw.modules import loader
        for err in loader().load_all():
            print(err)
    """)
    assert r.returncode == 0, r.stderr
    assert ("Registering `twin-dev' which already exists: provided by vfw-dev-one 1.0 (module"
            " one_pkg.dev) and by vfw-dev-two 1.0 (module two_pkg.dev)") in r.stdout


def test_disabling_one_plugin_or_autoload(fake_site, make_plugin):
    make_plugin("vfw-dev-good", "good_pkg", "good-dev")
    make_plugin("vfw-dev-other", "other_pkg", "other-dev")
    r = fake_site.vfw("run", "-device", "good-dev,help", VFW_DISABLE_PLUGINS="vfw-dev-good")
    assert r.returncode == 1
    assert "type 'good-dev' is provided by vfw-dev-good 1.0, which is disabled" in r.stderr
    r = fake_site.vfw("--disable-plugin", "vfw-dev-good", "run", "-device", "good-dev,help")
    assert "which is disabled" in r.stderr
    r = fake_site.vfw("run", "-device", "other-dev,help", VFW_DISABLE_PLUGINS="vfw-dev-good")
    assert r.returncode == 0
    r = fake_site.vfw("run", "-device", "good-dev,help", VFW_DISABLE_PLUGIN_AUTOLOAD="1")
    assert "which is disabled" in r.stderr
    r = fake_site.vfw("run", "-device", "good-dev,help", VFW_DISABLE_PLUGIN_AUTOLOAD="1",
                      VFW_PLUGINS="vfw-dev-good")
    assert r.returncode == 0, r.stderr
    r = fake_site.vfw("--no-plugin-autoload", "-p", "vfw-dev-good", "plugins")
    assert "vfw-dev-good 1.0 [loaded]" in r.stdout
    assert "vfw-dev-other 1.0 [disabled]" in r.stdout


def test_index_cache_is_used_and_notices_installs(fake_site, make_plugin):
    make_plugin("vfw-dev-good", "good_pkg", "good-dev")
    r = fake_site.vfw("run", "-device", "good-dev,help")
    assert r.returncode == 0
    indexes = [p for p in fake_site.cache.glob("plugin-index-*/*") if p.is_dir()]
    assert len(indexes) == 1
    index = indexes[0]
    names = {d["name"] for d in marshal.loads((index / "all").read_bytes())}
    assert "vfw-dev-good" in names
    assert marshal.loads((index / "types" / "good-dev").read_bytes())["name"] == "vfw-dev-good"
    # A warm lookup reads the per-type file: hide the type there and the lookup misses.
    (index / "types" / "good-dev").unlink()
    r = fake_site.vfw("run", "-device", "good-dev,help")
    assert "Device 'good-dev' not found" in r.stderr
    # Installing a distribution changes the site directory, which invalidates the cache.
    time.sleep(0.01)
    make_plugin("vfw-dev-new", "new_pkg", "new-dev")
    os.utime(fake_site.site)
    r = fake_site.vfw("run", "-device", "good-dev,help")
    assert r.returncode == 0, r.stderr
    r = fake_site.vfw("run", "-device", "new-dev,help")
    assert r.returncode == 0, r.stderr
    assert len([p for p in fake_site.cache.glob("plugin-index-*/*") if p.is_dir()]) == 1


def test_creating_files_in_the_working_directory_keeps_the_cache(fake_site, make_plugin, tmp_path):
    """python -m vfw puts the working directory on sys.path; its mtime must not matter."""
    make_plugin("vfw-dev-good", "good_pkg", "good-dev")
    work = tmp_path / "work"
    work.mkdir()
    probe = """
        import os, sys
        from vfw.modules import _fingerprint
        print(_fingerprint())
    """
    import subprocess
    import sys
    import textwrap

    def fingerprint() -> str:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(probe)], cwd=work,
                              env=fake_site.env(), capture_output=True, text=True).stdout
    before = fingerprint()
    (work / "disk.img").write_bytes(b"x")
    os.utime(work, (time.time() + 5, time.time() + 5))
    assert fingerprint() == before


def test_plugin_hooks_add_cli_commands(fake_site):
    hooks = """
        import click
        from vfw.hookspecs import hookimpl

        VFW_API = "1.0"

        @hookimpl
        def vfw_add_commands(cli):
            @cli.command()
            def hello():
                click.echo("hello from a plugin")
    """
    fake_site.add("vfw-cmd", "1.0", {"cmdplug/__init__.py": hooks}, "cmdplug", {})
    r = fake_site.vfw("hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello from a plugin\n"
    assert "hello" in fake_site.vfw("--help").stdout


def test_missing_known_types_name_the_distribution_to_install():
    assert known_provider("kvm-accel") == "vfw-accel-kvm"
    assert known_provider("tcg-accel") == "vfw-accel-tcg"
    assert known_provider("pc-machine") == "vfw-board-pc"
    assert known_provider("pc-i440fx-7.2-machine") == "vfw-board-pc"
    assert known_provider("virtio-blk-pci") == "vfw-dev-virtio"
    assert known_provider("qemu64-x86_64-cpu") == "vfw-board-pc"
    assert known_provider("e1000") is None
