"""The game's rules, deterministic with a seeded RNG."""

import random

import pytest

import spelltraction as st
from spelltraction import CELL_PX, HOLD_TICKS, LETTERS, PARKED, Game


def centre(cell):
    return st.cell_centre(cell)


def new_game(seed=1, **kw):
    return Game(random.Random(seed), **kw)


def put(game, cell, n=1):
    return [game.join(at=centre(cell)) for _ in range(n)]


def test_a_single_player_never_draws_the_attractor():
    game = new_game()
    put(game, 5)
    for _ in range(30):
        game.step()
        assert game.attractor == PARKED and game.held == 0


def test_two_in_one_cell_draw_it_and_it_scores_on_tick_21():
    game = new_game()
    a, b = put(game, 5, 2)
    letter = game.board[5]
    for n in range(1, HOLD_TICKS + 1):
        result = game.step()
        assert (game.attractor, game.held) == (5, n)
        assert result.scored is None
        game.check()
    result = game.step()  # the 21st tick on cell 5
    assert result.scored is not None
    assert result.scored.cell == 5 and result.scored.old == letter
    assert result.scored.new != letter and result.scored.new not in game.board[:5] + game.board[6:]
    assert game.board[5] == result.scored.new
    assert (game.attractor, game.held) == (PARKED, 0), "the attractor resets after scoring"
    assert game.letters_scored == 1
    game.check()


def test_ties_park_the_attractor():
    game = new_game()
    put(game, 1, 3)
    put(game, 7, 3)
    game.step()
    assert game.attractor == PARKED
    put(game, 7, 1)  # 3 vs 4: a unique maximum again
    game.step()
    assert (game.attractor, game.held) == (7, 1)


def test_moving_to_a_new_cell_restarts_the_hold():
    game = new_game()
    a, b = put(game, 2, 2)
    for _ in range(10):
        game.step()
    assert (game.attractor, game.held) == (2, 10)
    c, d, e = put(game, 9, 3)
    game.step()
    assert (game.attractor, game.held) == (9, 1)
    for p in (c, d, e):
        game.step()  # refill move tokens
        assert game.move(p, 1, *centre(3))
    game.step()
    assert (game.attractor, game.held) == (3, 1)


def test_scoring_pays_every_holder_wherever_they_stand():
    game = new_game(seed=5)
    stars = put(game, 0, 2)
    letter = game.board[0]
    # Hand-deal the scoring letter to players all over the board.
    holders = put(game, 6, 1) + put(game, 11, 1) + stars[:1]
    others = [c for c in LETTERS if c != letter]
    for p in holders:
        p.letters = st._hand(letter + others[0] + others[1])
    for p in game.players.values():
        if p not in holders:
            p.letters = st._hand("".join(others[2:5]))
    game.check()
    bystander = [p for p in game.players.values() if p not in holders]
    before = {p.id: p.score for p in bystander}
    for _ in range(HOLD_TICKS):
        game.step()
    result = game.step()
    assert result.scored.old == letter
    assert result.scored.scorers == len(holders) == 3
    for p in holders:
        assert p.score == 1
        assert letter not in p.letters and len(set(p.letters)) == 3
        assert p in result.dirty, "a scorer's new letters go out in YOU"
    for p in bystander:
        assert p.score == before[p.id]
    game.check()


def test_letters_stay_unique_through_many_scorings_and_z_is_dealt():
    game = new_game(seed=11, hold_ticks=2)
    rng = random.Random(3)
    players = put(game, 4, 40)
    seen = set(game.board)
    for p in players:
        seen.update(p.letters)
    for _ in range(600):
        # Herd most players to one random cell now and then, so letters score.
        if rng.random() < 0.2:
            cell = rng.randrange(12)
            for p in rng.sample(players, 30):
                game.move(p, 0, *centre(cell))
        result = game.step()
        game.check()
        seen.update(game.board)
        for p in players:
            seen.update(p.letters)
        if result.scored:
            assert result.scored.old not in game.board
    assert game.letters_scored > 20
    assert seen == set(LETTERS), "every letter, 'Z' included, gets dealt"


def test_leave_removes_the_player_and_its_count():
    game = new_game()
    a, b, c = put(game, 3, 3)
    game.step()
    assert game.counts[3] == 3 and game.attractor == 3
    game.leave(b)
    result = game.step()
    assert b.id in result.gone and b.id not in game.players
    assert game.counts[3] == 2 and game.attractor == 3
    game.leave(a)
    game.step()
    assert game.counts[3] == 1 and game.attractor == PARKED
    game.leave(a)  # leaving twice is harmless
    game.check()


def test_rejoin_gets_a_new_id_and_fresh_state():
    game = new_game()
    (a,) = put(game, 0)
    a.score = 7
    game.leave(a)
    (again,) = put(game, 0)
    assert again.id != a.id and again.id > a.id
    assert again.score == 0
    assert not game.move(a, 1, 10, 10), "a player who left cannot move"
    game.check()


def test_moves_are_clamped_to_the_board():
    game = new_game()
    (p,) = put(game, 0)
    game.step()
    assert game.move(p, 9, 60000, 60000)
    assert (p.x, p.y) == (st.BOARD_W - 1, st.BOARD_H - 1) and p.cell == 11 and p.seq == 9
    game.step()
    assert game.move(p, 10, 0, 0)
    assert (p.x, p.y, p.cell) == (0, 0, 0)
    game.check()


def test_moves_are_rate_limited_by_a_token_bucket():
    game = new_game()
    (p,) = put(game, 0)
    taken = [game.move(p, i, 10 + i, 10) for i in range(10)]
    assert taken == [True] * st.MOVE_BUCKET + [False] * (10 - st.MOVE_BUCKET)
    assert p.seq == st.MOVE_BUCKET - 1, "a refused move changes nothing"
    game.step()
    assert game.move(p, 50, 1, 1) and not game.move(p, 51, 2, 2), "one token per tick"
    for _ in range(10):
        game.step()
    assert sum(game.move(p, 60 + i, 3, 3) for i in range(10)) == st.MOVE_BUCKET
    assert game.moves_limited == 6 + 1 + 6


def test_movers_and_departures_are_bounded_per_tick():
    game = new_game(max_movers=16)
    players = put(game, 0, 100)
    result = game.step()
    assert len(result.movers) == 16, "joins count as moves, but at most K are listed"
    assert result.movers == players[-16:], "the most recent first-movers"
    for p in players[:40]:
        game.leave(p)
    result = game.step()
    assert len(result.gone) == 16 and result.movers == []
    for p in players[50:53]:
        game.move(p, 1, 200, 200)
        game.move(p, 2, 201, 200)
    result = game.step()
    assert result.movers == players[50:53], "each mover once, in order"
    assert result.dirty == players[50:53]


def test_a_player_who_moves_then_leaves_is_not_listed():
    game = new_game()
    a, b = put(game, 0, 2)
    game.step()
    game.move(a, 1, 300, 300)
    game.leave(a)
    result = game.step()
    assert a not in result.movers and a not in result.dirty
    assert result.gone == [a.id]


@pytest.mark.parametrize("seed", range(5))
def test_random_play_keeps_every_invariant(seed):
    rng = random.Random(seed)
    game = new_game(seed=seed, hold_ticks=3)
    live = []
    for _ in range(400):
        roll = rng.random()
        if roll < 0.3 or not live:
            live.append(game.join(at=(rng.randrange(-50, 600), rng.randrange(-50, 500))))
        elif roll < 0.4:
            game.leave(live.pop(rng.randrange(len(live))))
        else:
            for p in rng.sample(live, min(len(live), 5)):
                game.move(p, rng.randrange(65536), rng.randrange(0, 470), rng.randrange(0, 352))
        game.step()
        game.check()
    assert CELL_PX * 4 == st.BOARD_W


def test_compact_gives_back_the_table_that_churn_grew():
    """15,000 players of whom 300 leave and come back, 23 times: the players'
    dict grows to twice its table (CPython keeps the left ones' slots until it
    grows); compact() rebuilds it at the size a fresh one has."""
    import sys

    game = Game(random.Random(1))
    players = [game.join() for _ in range(15000)]
    fresh = sys.getsizeof(dict(game.players))
    rng = random.Random(2)
    for _ in range(23):
        wave = rng.sample(players, 300)
        for p in wave:
            game.leave(p)
        for p in wave:
            game.add(p)
    assert sys.getsizeof(game.players) > 1.5 * fresh  # what the soak saw, 0.6 -> 1.3 MB
    assert game.compact()
    assert sys.getsizeof(game.players) == fresh and len(game.players) == 15000
    assert not game.compact()  # nothing left since
