"""The ``vfw`` command group (click): run, plugins, types, and commands plugins add."""

from __future__ import annotations

import sys
from typing import Any

import click

from . import __version__, modules
from .qom import TABLE

EXAMPLES = """\b
Examples:
  vfw run                          boot vfw's built-in guest on the default machine
                                   (KVM if usable, else TCG): it prints the CPU,
                                   memory and PCI devices it sees, then powers off
  vfw run -device virtio-rng-pci   the same with a device added (the guest reads it)
  vfw run -accel tcg -m 512 -nographic -kernel bzImage \\
          -initrd initrd.gz -append console=ttyS0
                                   boot Linux on the software CPU
  vfw run -machine help            list machines (and the plugin providing each)
  vfw run -device help             list devices; -device NAME,help lists its options
  vfw plugins                      installed plugins, their types and load errors
  vfw types --dot | dot -Tsvg > types.svg
                                   draw the type hierarchy
"""


class VfwGroup(click.Group):
    """A group that asks plugins for extra commands only when a name is not built in."""

    _plugin_commands_loaded = False

    def _load_plugin_commands(self) -> None:
        if not self._plugin_commands_loaded:
            self._plugin_commands_loaded = True
            modules.loader().hooks().vfw_add_commands(cli=self)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None:
            self._load_plugin_commands()
            cmd = super().get_command(ctx, cmd_name)
        return cmd

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)


@click.group(cls=VfwGroup, help="vfw: a virtual-machine framework built the way QEMU is built.\n\n"
             + EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vfw")
@click.option("--disable-plugin", "disabled", multiple=True, metavar="DIST",
              help="Do not load this plugin distribution (repeatable; env VFW_DISABLE_PLUGINS).")
@click.option("--no-plugin-autoload", is_flag=True,
              help="Load no plugin unless named with --plugin (env VFW_DISABLE_PLUGIN_AUTOLOAD).")
@click.option("-p", "--plugin", "enabled", multiple=True, metavar="DIST",
              help="With --no-plugin-autoload: load this plugin distribution (env VFW_PLUGINS).")
def cli(disabled: tuple[str, ...], no_plugin_autoload: bool, enabled: tuple[str, ...]) -> None:
    if disabled or no_plugin_autoload or enabled:
        modules.configure(autoload=False if no_plugin_autoload else None,
                          disabled=disabled, enabled=enabled)


def _run_help() -> str:
    from .cmdline import help_text

    return ("Run a virtual machine. Options are QEMU's, with one or two dashes; with none,"
            " vfw boots its built-in guest.\n\n" + EXAMPLES
            + "\n\b\nQEMU options:\n" + help_text())


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False,
                               "help_option_names": ["--help", "-h", "-help"]},
             help=_run_help(), short_help="Run a virtual machine (QEMU's options).")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(args: tuple[str, ...]) -> None:
    from .vl import run_cli

    sys.exit(run_cli(list(args)))


@cli.command()
def plugins() -> None:
    """List plugin distributions, the types each provides, and load errors."""
    ldr = modules.loader()
    ldr.load_all()
    for dist in ldr.distributions():
        state = dist.state if dist.error is None or dist.state == "disabled" else "error"
        click.echo(f"{dist.name} {dist.version} [{state}]")
        if dist.plugin_module:
            click.echo(f"  plugin module: {dist.plugin_module}")
        for name in sorted(dist.types):
            click.echo(f"  {name}")
        if dist.error:
            click.echo(f"  error: {dist.error}")


@cli.command()
@click.option("--dot", is_flag=True, help="Print a Graphviz digraph instead of a text tree.")
def types(dot: bool) -> None:
    """Show the type hierarchy (QOM) with the distribution that provides each type."""
    for error in modules.loader().load_all():
        click.echo(f"warning: {error}", err=True)
    impls = {impl.name: impl for impl in TABLE.all()}
    children: dict[str | None, list[str]] = {}
    for impl in impls.values():
        TABLE.initialize(impl)
        children.setdefault(impl.parent, []).append(impl.name)
    click.echo(render_dot(impls, children) if dot else render_tree(impls, children))


def _label(impl: Any) -> str:
    text = str(impl.name)
    if impl.abstract:
        text += " (abstract)"
    if impl.provider.distribution:
        text += f" [{impl.provider.distribution}]"
    if impl.interfaces:
        text += " implements " + ", ".join(impl.interfaces)
    return text


def render_tree(impls: dict[str, Any], children: dict[str | None, list[str]]) -> str:
    lines: list[str] = []

    def walk(name: str, prefix: str, last: bool, top: bool) -> None:
        lines.append(_label(impls[name]) if top else prefix + ("└── " if last else "├── ")
                     + _label(impls[name]))
        kids = sorted(children.get(name, []))
        inner = "" if top else prefix + ("    " if last else "│   ")
        for i, kid in enumerate(kids):
            walk(kid, inner, i == len(kids) - 1, False)

    for root in sorted(children.get(None, [])):
        walk(root, "", True, True)
    return "\n".join(lines)


def render_dot(impls: dict[str, Any], children: dict[str | None, list[str]]) -> str:
    lines = ["digraph qom {", "  rankdir=LR;", "  node [shape=box, fontname=monospace];"]
    for impl in sorted(impls.values(), key=lambda i: i.name):
        style = ', style="dashed"' if impl.abstract else ""
        dist = impl.provider.distribution or "?"
        lines.append(f'  "{impl.name}" [label="{impl.name}\\n{dist}"{style}];')
    for parent, kids in sorted(children.items(), key=lambda kv: kv[0] or ""):
        for kid in sorted(kids):
            if parent is not None:
                lines.append(f'  "{parent}" -> "{kid}";')
    for impl in impls.values():
        for iface in impl.interfaces:
            lines.append(f'  "{impl.name}" -> "{iface}" [style=dotted];')
    lines.append("}")
    return "\n".join(lines)
