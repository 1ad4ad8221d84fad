"""Generate the three example tasks (and a dirty copy of one) with a fixed seed.

    python examples/generate_datasets.py --out examples/data

Records come from varied templates, slots and phrasings; splits are made by content hash with
near-duplicates kept on one side (lorafleet.train.data.split), so val/test never leak into train.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

from lorafleet.train.data.neardup import near_duplicate_pairs
from lorafleet.train.data.split import assign

from lorafleet.formats import parse_record, to_chat
from lorafleet.fsutil import atomic_write_jsonl
from lorafleet.heldout import heldout_text

SEED = 20261127
RATIOS = (0.7, 0.1, 0.2)
GUARD_THRESHOLD = 0.8  # lorafleet.heldout's default near-match threshold

PRODUCTS = ["wireless earbuds", "standing desk", "coffee grinder", "running shoes", "phone case", "air fryer",
            "yoga mat", "laptop stand", "smart watch", "desk lamp", "backpack", "blender", "kettle",
            "gaming mouse", "winter jacket", "office chair", "water bottle", "bluetooth speaker"]
NAMES = ["Maria", "James", "Aisha", "Tom", "Priya", "Lukas", "Chen", "Fatima", "Diego", "Emma", "Kofi", "Sofia",
         "Noah", "Yuki", "Omar", "Lena"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the weekend", "last week", "yesterday"]
OPENERS = ["", "Hi, ", "Hello, ", "Hey there. ", "Good morning. ", "Hi team, "]
CLOSERS = ["", " Thanks.", " Please help.", " Thank you!", " Can you sort this out?", " Appreciate it."]

# intent → (customer phrasings, agent follow-up). {p}=product, {o}=order, {d}=day, {a}=amount.
INTENTS: dict[str, tuple[list[str], str]] = {
    "fraud_report": ([
        "there is a charge of ${a} on my card that I never made",
        "someone used my account to buy a {p} without my permission",
        "I think my card was stolen, I see purchases I did not authorise",
        "I got an order confirmation for {o} but I never placed it",
        "my bank flagged a suspicious payment to your store on {d}",
        "an unknown person logged in and ordered stuff on my account",
    ], "I have frozen the account and opened a fraud case."),
    "refund": ([
        "I want my money back for the {p}, order {o}",
        "please refund the ${a} you charged me for order {o}",
        "the {p} was not as described, I'd like a refund",
        "when will I get the refund for my returned {p}?",
        "can I get a refund instead of store credit for order {o}?",
        "I was promised a refund on {d} and it still has not arrived",
    ], "I will process the refund to your original payment method."),
    "shipping": ([
        "where is my package? order {o} has not arrived",
        "the tracking for my {p} has not updated since {d}",
        "how long does delivery take to Canada?",
        "my {p} is stuck in transit, order {o}",
        "can you ship order {o} with express delivery?",
        "the courier says delivered but I never got my {p}",
    ], "I am checking the delivery status with the carrier."),
    "cancel": ([
        "please cancel order {o} before it ships",
        "I ordered the {p} by mistake, cancel it",
        "cancel my subscription, I don't want to be charged again",
        "I want to cancel my order from {d}",
        "stop order {o}, I changed my mind about the {p}",
        "how do I cancel the {p} I just bought?",
    ], "I have cancelled it and you will not be charged."),
    "return": ([
        "how do I send back the {p}? it does not fit",
        "I need a return label for order {o}",
        "the {p} arrived broken and I want to return it",
        "can I exchange the {p} for a different size?",
        "what is your return window for the {p}?",
        "I'd like to return two items from order {o}",
    ], "I have emailed you a prepaid return label."),
    "account_access": ([
        "I can't log in to my account, it says wrong password",
        "the password reset email never arrives",
        "my account is locked after too many attempts",
        "I lost access to the email on my account",
        "two-factor code is not working when I sign in",
        "how do I change the email address I log in with?",
    ], "I have sent a secure link to restore access."),
    "billing": ([
        "I was charged twice for order {o}",
        "why is my invoice ${a} higher than the price shown?",
        "I need a VAT invoice for my {p} purchase",
        "the discount code was not applied to order {o}",
        "my subscription renewed at the wrong price on {d}",
        "can you explain the extra fee on my bill?",
    ], "I am reviewing the charges on your invoice."),
    "payment_method": ([
        "how do I update the card on my account?",
        "can I pay for the {p} with PayPal?",
        "my card keeps getting declined at checkout",
        "do you accept bank transfer for large orders?",
        "I want to remove my old card from the account",
        "can I split the payment for the {p} across two cards?",
    ], "I can help you update your payment options."),
    "product_question": ([
        "is the {p} waterproof?",
        "what are the dimensions of the {p}?",
        "does the {p} come with a warranty?",
        "is the {p} available in black?",
        "will the {p} be back in stock soon?",
        "what is the difference between the two {p} models?",
    ], "Here are the details about that product."),
    "complaint": ([
        "your support agent was rude to me on {d}",
        "I am very unhappy with the quality of the {p}",
        "this is the third time my order was wrong, I am fed up",
        "nobody answered my emails for a week, terrible service",
        "the {p} broke after two days, really disappointed",
        "I waited an hour on the phone on {d} and got cut off",
    ], "I am sorry about this and have escalated it to a manager."),
    "other": ([
        "do you have a physical store in Berlin?",
        "are you hiring for the warehouse?",
        "what are your opening hours on {d}?",
        "can I send you feedback about your website design?",
        "do you offer gift wrapping?",
        "is there a student discount?",
    ], "Thanks for reaching out, here is some general information."),
}

# clause type → sentences; {party}, {n}, {state} are slots.
CLAUSES: dict[str, list[str]] = {
    "confidentiality": [
        "The Receiving Party shall hold all Confidential Information in strict confidence.",
        "{party} shall not disclose any proprietary information of the other party to third parties.",
        "Each party agrees to keep the terms of this Agreement confidential for {n} years.",
        "Confidential Information shall be used solely for the purpose of performing this Agreement.",
        "{party} shall protect the disclosing party's trade secrets with reasonable care.",
    ],
    "termination": [
        "Either party may terminate this Agreement upon {n} days' written notice.",
        "{party} may terminate this Agreement immediately if the other party materially breaches it.",
        "This Agreement shall terminate automatically if {party} becomes insolvent.",
        "Upon termination, all licences granted hereunder shall cease.",
        "{party} may end this Agreement for convenience with {n} days' prior notice.",
    ],
    "indemnification": [
        "{party} shall indemnify and hold harmless the Customer from any third-party claims.",
        "The Supplier agrees to defend and indemnify {party} against losses arising from its negligence.",
        "{party} shall compensate the other party for all damages caused by a breach of warranty.",
        "Each party shall indemnify the other against claims of intellectual property infringement.",
        "{party} will hold the Licensor harmless from any liability resulting from its use of the software.",
    ],
    "limitation_of_liability": [
        "In no event shall {party} be liable for indirect or consequential damages.",
        "The total liability of {party} shall not exceed the fees paid in the preceding {n} months.",
        "Neither party shall be liable for loss of profits or data.",
        "{party}'s aggregate liability under this Agreement is capped at ${n},000.",
        "Liability for lost revenue is excluded to the maximum extent permitted by law.",
    ],
    "governing_law": [
        "This Agreement shall be governed by the laws of the State of {state}.",
        "Any dispute shall be resolved exclusively in the courts of {state}.",
        "The parties submit to the jurisdiction of the courts located in {state}.",
        "This contract is construed in accordance with the laws of {state}, without regard to conflict of laws.",
        "All claims arising hereunder shall be settled under the law of {state}.",
    ],
    "payment_terms": [
        "{party} shall pay all invoices within {n} days of receipt.",
        "Late payments shall accrue interest at {n} percent per month.",
        "Fees are payable quarterly in advance by bank transfer.",
        "{party} shall reimburse reasonable travel expenses upon presentation of receipts.",
        "All amounts are due net {n} from the invoice date.",
    ],
    "force_majeure": [
        "Neither party shall be liable for delays caused by events beyond its reasonable control.",
        "{party} is excused from performance during fire, flood, war or pandemic.",
        "Obligations are suspended for the duration of any act of God or government order.",
        "If a force majeure event lasts more than {n} days, either party may terminate.",
        "{party} shall notify the other party promptly of any event of force majeure.",
    ],
    "non_compete": [
        "{party} shall not engage in any competing business for {n} months after termination.",
        "During the term, {party} may not solicit the Company's customers or employees.",
        "The Employee agrees not to work for a competitor within {n} miles for one year.",
        "{party} shall refrain from offering similar services to the Client's competitors.",
        "For {n} years, {party} will not develop a product that competes with the Licensed Product.",
    ],
    "none": [
        "This Agreement is entered into as of the Effective Date by and between {party} and the Client.",
        "Headings in this Agreement are for convenience only.",
        "This Agreement may be executed in counterparts, each of which is an original.",
        "Notices shall be sent to the addresses listed on the signature page.",
        "{party} is a corporation organised under the laws of {state}.",
        "Capitalised terms have the meanings given in Schedule {n}.",
        "The recitals above form part of this Agreement.",
        "This Agreement constitutes the entire agreement between the parties.",
    ],
}
PARTIES = ["the Supplier", "the Customer", "the Licensee", "the Contractor", "the Vendor", "Acme Corp",
           "the Consultant", "the Company", "Northwind Ltd", "the Service Provider"]
STATES = ["New York", "Delaware", "California", "Texas", "England and Wales", "Ontario", "Bavaria", "Ireland"]
CLAUSE_INSTRUCTION = ("Classify the contract clause. Answer with exactly one of: "
                      + ", ".join(CLAUSES) + ".")

# ticket summaries: (issue phrase for the ticket, issue phrase for the summary)
ISSUES = [
    ("my {p} stopped turning on after two days", "{p} stopped working after two days"),
    ("the {p} I received is the wrong colour", "received {p} in the wrong colour"),
    ("I was charged twice for the {p}", "double charge for {p}"),
    ("the {p} arrived with a cracked screen", "{p} arrived damaged"),
    ("my {p} order is a week late", "{p} delivery is a week late"),
    ("the {p} is missing the charging cable", "{p} missing charging cable"),
    ("the app will not pair with my {p}", "app cannot pair with {p}"),
    ("the {p} makes a loud rattling noise", "{p} makes a rattling noise"),
    ("I never received the refund for my {p}", "refund for {p} not received"),
    ("the discount was not applied to my {p}", "discount not applied to {p}"),
]
TRIED = ["I already restarted it", "I tried the troubleshooting guide", "I contacted the courier",
         "I checked my bank statement", "I reinstalled the app", "I waited three days"]
ASKS = [("Please send a replacement.", "wants a replacement"), ("I want a full refund.", "wants a refund"),
        ("Can someone call me back?", "requests a call back"), ("Please fix this quickly.", "asks for a quick fix")]
SUMMARY_SYSTEM = "Summarise the support ticket in one line."


def support_intents(rng: random.Random, per_intent: int = 40) -> list[dict]:
    rows, seen = [], set()
    for label, (phrasings, reply) in INTENTS.items():
        tries = 0
        while sum(r["label"] == label for r in rows) < per_intent and tries < per_intent * 50:
            tries += 1
            text = rng.choice(phrasings).format(p=rng.choice(PRODUCTS), o=f"#{rng.randint(10000, 99999)}",
                                                d=rng.choice(DAYS), a=rng.randint(12, 480))
            text = rng.choice(OPENERS) + text + ("" if text.endswith("?") else ".") + rng.choice(CLOSERS)
            text = text[0].upper() + text[1:]
            if text in seen:
                continue
            seen.add(text)
            rows.append({"messages": [{"role": "user", "content": text},
                                      {"role": "assistant", "content": f"[Intent: {label}] {reply}"}],
                         "label": label})
    return rows


def contract_clauses(rng: random.Random, per_label: int = 36) -> list[dict]:
    rows, seen = [], set()
    for label, sentences in CLAUSES.items():
        tries = 0
        want = per_label * 2 if label == "none" else per_label  # `none` dominates real contracts
        while sum(r["label"] == label for r in rows) < want and tries < want * 50:
            tries += 1
            text = rng.choice(sentences).format(party=rng.choice(PARTIES), n=rng.choice([5, 10, 12, 14, 30, 60, 90]),
                                                state=rng.choice(STATES))
            text = text[0].upper() + text[1:]
            if rng.random() < 0.3:
                text = f"{rng.randint(2, 19)}.{rng.randint(1, 9)} {text}"
            if text in seen:
                continue
            seen.add(text)
            rows.append({"instruction": CLAUSE_INSTRUCTION, "input": text, "output": label, "label": label})
    return rows


def ticket_summaries(rng: random.Random, n: int = 300) -> list[dict]:
    rows, seen = [], set()
    while len(rows) < n:
        name, product = rng.choice(NAMES), rng.choice(PRODUCTS)
        issue, issue_short = rng.choice(ISSUES)
        tried, (ask, ask_short) = rng.choice(TRIED), rng.choice(ASKS)
        order = f"#{rng.randint(10000, 99999)}"
        ticket = (f"{rng.choice(OPENERS)}this is {name}. I bought a {product} on {rng.choice(DAYS)} (order {order}) "
                  f"and {issue.format(p=product)}. {tried}. {ask}").strip()
        ticket = ticket[0].upper() + ticket[1:]
        summary = f"{name}: {issue_short.format(p=product)}, order {order}; {ask_short}."
        if ticket in seen:
            continue
        seen.add(ticket)
        rows.append({"messages": [{"role": "system", "content": SUMMARY_SYSTEM},
                                  {"role": "user", "content": ticket},
                                  {"role": "assistant", "content": summary[0].upper() + summary[1:]}]})
    return rows


def split_rows(rows: list[dict], text_of: Callable[[dict], str]) -> dict[str, list[dict]]:
    """The project's own content-hash split, near-dups on one side (threshold 0.9: templates share words).

    Records the held-out guard sees as near each other (their prompts, at its default threshold) are kept on
    one side too, so `lorafleet data check` and `train` find nothing held out in the clean train splits.
    """
    import hashlib

    texts = [text_of(r) for r in rows]
    hashes = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
    prompts = [heldout_text(to_chat(parse_record(r)).messages) for r in rows]
    names = assign(texts, hashes, RATIOS, threshold=0.9,
                   extra_pairs=near_duplicate_pairs(prompts, GUARD_THRESHOLD))
    return {s: [r for r, n in zip(rows, names, strict=True) if n == s] for s in ("train", "val", "test")}


def dirty_copy(rng: random.Random, train: list[dict], val: list[dict]) -> list[str]:
    """support-intents train with every problem `lorafleet data check` finds, as JSONL lines."""
    rows = [dict(r) for r in train]
    extra: list[dict] = []
    extra += [json.loads(json.dumps(r)) for r in rng.sample(train, 6)]  # exact duplicates
    for r in rng.sample(train, 5):  # near-duplicates: one word changed
        near = json.loads(json.dumps(r))
        near["messages"][0]["content"] = near["messages"][0]["content"].replace(" I ", " i ", 1) + " asap"
        extra.append(near)
    for variant in ("Refund", "refund.", " REFUND ", "Shipping!"):  # label variants
        r = json.loads(json.dumps(rng.choice([x for x in train if x["label"] == variant.strip(" .!").lower()])))
        r["label"] = variant
        r["messages"][1]["content"] = r["messages"][1]["content"].replace(
            f"[Intent: {variant.strip(' .!').lower()}]", f"[Intent: {variant}]")
        extra.append(r)
    pii = ["My email is maria.lopez@example.com, order #55123 never came",
           "Call me on +1 415 555 0134 about the refund",
           "My card 4111 1111 1111 1111 was charged twice",
           "Please refund to IBAN DE89 3704 0044 0532 0130 00",
           "I pasted my key sk-live-8f3KdL92mZq7XpA1bC4dE5fG6hJ7 by mistake, is that a problem?"]
    labels = ["shipping", "refund", "billing", "refund", "other"]
    for text, label in zip(pii, labels, strict=True):
        extra.append({"messages": [{"role": "user", "content": text},
                                   {"role": "assistant", "content": f"[Intent: {label}] {INTENTS[label][1]}"}],
                      "label": label})
    extra.append({"messages": [{"role": "user", "content": "I want to cancel order #12345"},
                               {"role": "assistant", "content": "   "}], "label": "cancel"})  # empty turn
    extra += [json.loads(json.dumps(r)) for r in rng.sample(val, 4)]  # leakage vs the clean val split
    rows += extra
    rng.shuffle(rows)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines.insert(len(lines) // 2, '{"messages": [{"role": "user", "content": "broken line"')  # malformed JSON
    return lines


def generate(out: Path) -> dict[str, dict[str, int]]:
    """Write every dataset under `out`; returns record counts per task and split."""
    rng = random.Random(SEED)
    counts: dict[str, dict[str, int]] = {}
    tasks = {
        "support-intents": (support_intents(rng), lambda r: r["messages"][0]["content"]),
        "contract-clauses": (contract_clauses(rng), lambda r: r["input"]),
        "ticket-summaries": (ticket_summaries(rng), lambda r: r["messages"][1]["content"]),
    }
    splits_by_task = {}
    for task, (rows, text_of) in tasks.items():
        splits = split_rows(rows, text_of)
        splits_by_task[task] = splits
        counts[task] = {s: atomic_write_jsonl(out / task / f"{s}.jsonl", recs) for s, recs in splits.items()}
    intents = splits_by_task["support-intents"]
    lines = dirty_copy(rng, intents["train"], intents["val"])
    dirty = out / "support-intents-dirty" / "train.jsonl"
    dirty.parent.mkdir(parents=True, exist_ok=True)
    dirty.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    counts["support-intents-dirty"] = {"train": len(lines)}
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    args = parser.parse_args()
    for task, counts in generate(args.out).items():
        print(task, counts)


if __name__ == "__main__":
    main()
