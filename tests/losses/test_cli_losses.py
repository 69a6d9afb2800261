"""`alignx losses` lists every registered loss with its one-line description."""

from alignx_jax import losses
from alignx_jax.cli import main


def test_alignx_losses_prints_every_name_with_its_description(capsys):
    assert main(["losses"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(losses.names())
    for line, (name, description) in zip(lines, losses.descriptions().items()):
        assert line.split(None, 1)[1] == description, name
