"""items.adapter column (backfilled) and the card_updates outbox for card.review

Revision ID: 0003
Revises: 0002
"""

import json
import re

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

VERSION_REF = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}@v[1-9][0-9]{0,8}\Z")  # name@vN (lorafleet.refs)


def upgrade() -> None:
    op.create_table('card_updates',
    sa.Column('adapter', sa.String(length=200), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('queued_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('adapter')
    )
    with op.batch_alter_table('items', schema=None) as batch_op:
        batch_op.add_column(sa.Column('adapter', sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f('ix_items_adapter'), ['adapter'], unique=False)
    _backfill()


def _backfill() -> None:
    """Copy each item's adapter out of its JSON (portable: read in Python, update by id)."""
    conn = op.get_bind()
    items = sa.table('items', sa.column('id', sa.Integer), sa.column('data', sa.JSON),
                     sa.column('adapter', sa.String))
    rows = conn.execute(sa.select(items.c.id, items.c.data)).all()
    updates = []
    for item_id, data in rows:
        if isinstance(data, str):
            data = json.loads(data)
        adapter = (data or {}).get('adapter')
        if isinstance(adapter, str):
            updates.append({'item_id': item_id, 'adapter': adapter[:200]})
    if updates:
        conn.execute(items.update().where(items.c.id == sa.bindparam('item_id'))
                     .values(adapter=sa.bindparam('adapter')), updates)
    # Versions graded before this revision get their card.review written on the app's first start.
    versions = sorted({u['adapter'] for u in updates if VERSION_REF.match(u['adapter'])})
    if versions:
        outbox = sa.table('card_updates', sa.column('adapter', sa.String), sa.column('seq', sa.Integer),
                          sa.column('queued_at', sa.Float))
        conn.execute(outbox.insert(), [{'adapter': a, 'seq': 1, 'queued_at': 0.0} for a in versions])


def downgrade() -> None:
    with op.batch_alter_table('items', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_items_adapter'))
        batch_op.drop_column('adapter')
    op.drop_table('card_updates')
