"""A game exported and restored (an upgrade's hand-over) goes on exactly as it would have.

Every field of every player, the board, the attractor and its hold, the
scoring step waiting for the disk, this tick's movers and the random
generator come across, so the successor's next steps are the predecessor's:
the same TICKs, the same scores, the same letters.
"""

import json
import random

import pytest

import spelltraction as st


def play(game, players, rng, ticks, release_every=0):
    """Moves (some onto the same cells), leaves and steps; what each step said."""
    said = []
    for _ in range(ticks):
        for p in rng.sample(players, 6):
            if p.cell >= 0:
                cell = rng.choice((0, 0, 5, rng.randrange(st.CELLS)))
                x, y = st.cell_centre(cell)
                game.move(p, rng.randrange(65536), x, y)
        if release_every and game.pending_score is not None and game.tick % release_every == 0:
            game.release_score()
        result = game.step()
        said.append((st.frame(st.TickMsg(result.tick, game.attractor, game.held,
                                         "".join(game.board), len(game.players),
                                         tuple(game.counts))),
                     result.scored, [p.id for p in result.movers], list(result.gone),
                     sorted((p.id, p.letters, p.score) for p in result.dirty)))
        game.check()
    return said


@pytest.mark.parametrize("deferred", [False, True], ids=["scores-at-once", "scores-wait-disk"])
def test_a_restored_game_steps_as_the_original_would(deferred):
    game = st.Game(random.Random(7))
    game.defer_scoring = deferred
    players = [game.join() for _ in range(40)]
    play(game, players, random.Random(1), 150, release_every=3 if deferred else 0)
    assert game.letters_scored > 0
    gone = players.pop(3)
    game.leave(gone)
    for p in players[:5]:  # moves of the tick under way, not stepped yet
        game.move(p, 1, 10, 10)
    state = json.loads(json.dumps(game.export([gone])))  # as plain data, through JSON
    copy, everyone = st.Game.restore(state)
    assert everyone[gone.id].cell < 0 and gone.id not in copy.players
    copied = [everyone[p.id] for p in players]
    for name in st.Game.PLAYER_FIELDS:
        assert [getattr(p, name) for p in copied] == [getattr(p, name) for p in players], name
    original = play(game, players, random.Random(2), 150, release_every=3 if deferred else 0)
    restored = play(copy, copied, random.Random(2), 150, release_every=3 if deferred else 0)
    assert restored == original
    assert copy.letters_scored == game.letters_scored > 0
    assert copy.join().id == game.join().id  # the same next id, from the same generator


def test_a_scoring_step_waiting_for_the_disk_comes_across():
    game = st.Game(random.Random(3))
    game.defer_scoring = True
    players = [game.join(at=st.cell_centre(0)) for _ in range(5)]
    for _ in range(st.HOLD_TICKS + 2):
        game.step()
    assert game.pending_score is not None
    copy, everyone = st.Game.restore(json.loads(json.dumps(game.export())))
    assert copy.pending_score is not None
    assert [(p.id, letters, score) for p, letters, score in copy.pending_score.scorers] == \
        [(p.id, letters, score) for p, letters, score in game.pending_score.scorers]
    for g in (game, copy):
        g.release_score()
    assert copy.step().scored == game.step().scored is not None
    assert [everyone[p.id].score for p in players] == [p.score for p in players]
