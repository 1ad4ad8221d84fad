"""Writes prompts.jsonl: the off-domain forgetting suite's general prompts (written for lorafleet).

    python examples/forgetting/generate.py      # deterministic: the same file every time

Five kinds, 60 each: facts, arithmetic, formatting, instructions and short chat. Every prompt asks
for a short answer, so a suite run decodes few tokens. There are no references: the forgetting
suite compares each adapter with the base's own greedy answers.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).with_name("prompts.jsonl")

FACTS = [
    "What is the capital of France?", "What is the capital of Japan?", "What is the capital of Italy?",
    "What is the capital of Canada?", "What is the capital of Egypt?", "What is the capital of Spain?",
    "What is the largest planet in the solar system?", "Which planet is closest to the sun?",
    "How many days are in a week?", "How many months are in a year?", "How many legs does a spider have?",
    "How many continents are there?", "What gas do plants take in from the air?",
    "What is the boiling point of water in degrees Celsius?", "What is the freezing point of water in Celsius?",
    "Who wrote Romeo and Juliet?", "What colour do you get by mixing blue and yellow?",
    "What is the chemical symbol for gold?", "What is the chemical symbol for water?",
    "What is the largest ocean on Earth?", "Which animal is known as the king of the jungle?",
    "How many hours are in a day?", "How many minutes are in an hour?", "What is the tallest animal?",
    "What do bees make?", "Which organ pumps blood through the body?", "What is the opposite of hot?",
    "What is the opposite of up?", "Which season comes after winter?", "Which season comes after summer?",
    "What is the main language spoken in Brazil?", "What is the currency of the United Kingdom?",
    "What is the currency of Japan?", "How many sides does a triangle have?", "How many sides does a hexagon have?",
    "What is the square root of 81?", "What shape has four equal sides and four right angles?",
    "Which is the longest river in Africa?", "What is frozen water called?",
    "What star is at the centre of our solar system?",
    "What do caterpillars turn into?", "How many wheels does a bicycle have?",
    "What is the first letter of the alphabet?",
    "What is the last letter of the English alphabet?", "Which metal is liquid at room temperature?",
    "What is the hardest natural substance?", "Which planet is known as the red planet?",
    "How many strings does a standard guitar have?", "What do you call a baby cat?", "What do you call a baby dog?",
    "What instrument has black and white keys?", "In which country are the pyramids of Giza?",
    "What is the largest mammal?", "How many players are on a football (soccer) team on the field?",
    "What is H2O commonly called?", "Which direction does the sun rise from?",
    "What is the colour of a clear daytime sky?",
    "How many zeros are in one thousand?", "What is the plural of mouse?", "What is the past tense of run?",
]

WORDS = ["apple", "river", "garden", "window", "planet", "silver", "orange", "bridge", "candle", "forest",
         "market", "pencil", "rocket", "summer", "travel", "yellow", "kitten", "mirror", "coffee", "island"]
PHRASES = ["hello world", "the quick brown fox", "good morning everyone", "open the door", "a cup of tea",
           "blue sky at noon", "time to go home", "read the manual", "the cat sat down", "fresh bread daily"]
ADJECTIVES = ["happy", "fast", "big", "cold", "bright", "quiet", "old", "strong", "easy", "clean"]
TOPICS = ["the moon", "rain", "a library", "friendship", "the ocean", "autumn", "a train station", "coffee",
          "mountains", "a city at night", "music", "a garden"]
CHAT = [
    "Hi! How are you today?", "Good morning! What's a nice way to start the day?",
    "I'm feeling a bit tired. Any quick tip?", "Thanks for your help earlier!",
    "Can you recommend a book genre for a long flight?", "What's a fun weekend activity?",
    "I just finished a big project at work!", "Tell me a short joke.", "What should I cook for dinner tonight?",
    "It's raining here. What can I do indoors?", "How do I say goodbye politely in an email?",
    "I'm nervous about a job interview tomorrow.", "What's a good name for a goldfish?",
    "Do you have a favourite colour?", "Give me one word of encouragement.", "I can't sleep. Any advice?",
    "What is a healthy snack?", "How can I stay focused while studying?", "Suggest a hobby I could try.",
    "What's a polite way to decline an invitation?", "I'm bored. Suggest something quick to do.",
    "What is a good way to relax after work?", "Can you help me pick a gift for a friend?",
    "Say something nice about Mondays.", "What's a simple way to save money?", "How do I make a cup of tea?",
    "Any tips for a first day at a new job?", "What's a good stretch for a stiff neck?",
    "Give me a fun fact.", "How do I keep a houseplant alive?",
]
CHAT_SECOND = ["Please keep it short.", "One sentence, please.", "Just a quick answer.", "Briefly!"]


def facts() -> list[str]:
    return [f"{q} Answer in a few words." for q in FACTS]


def arithmetic(rng: random.Random) -> list[str]:
    out = []
    for i in range(60):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        kind = i % 5
        if kind == 0:
            out.append(f"What is {a} + {b}? Reply with the number only.")
        elif kind == 1:
            out.append(f"What is {max(a, b)} - {min(a, b)}? Reply with the number only.")
        elif kind == 2:
            out.append(f"What is {a % 13 + 2} times {b % 11 + 2}? Reply with the number only.")
        elif kind == 3:
            out.append(f"Which is larger, {a} or {b + 100}? Reply with the number only.")
        else:
            out.append(f"If I have {a + 100} apples and eat {b}, how many are left? Reply with the number only.")
    return out


def formatting(rng: random.Random) -> list[str]:
    out = []
    for i in range(60):
        word, phrase = WORDS[(i // 6 + i) % len(WORDS)], PHRASES[i // 6 % len(PHRASES)]
        kind = i % 6
        if kind == 0:
            out.append(f"Write the word '{word}' in capital letters.")
        elif kind == 1:
            out.append(f"Write '{phrase}' in title case.")
        elif kind == 2:
            out.append(f"Spell the word '{word}' backwards.")
        elif kind == 3:
            items = rng.sample(WORDS, 3)
            out.append(f"Put these words in alphabetical order, separated by commas: {', '.join(items)}.")
        elif kind == 4:
            out.append(f"Write the number {rng.randint(11, 99)} in words.")
        else:
            out.append(f"Return this as a JSON object with a key \"text\": {phrase}")
    return out


def instructions(rng: random.Random) -> list[str]:
    out = []
    for i in range(60):
        j = i // 6  # each kind walks its own list: no prompt twice
        adj, topic, word = ADJECTIVES[j % len(ADJECTIVES)], TOPICS[(j + i) % len(TOPICS)], WORDS[(j + i) % len(WORDS)]
        kind = i % 6
        if kind == 0:
            out.append(f"Give one synonym for '{adj}'.")
        elif kind == 1:
            out.append(f"Give the opposite of '{adj}'.")
        elif kind == 2:
            out.append(f"Write one short sentence about {topic}.")
        elif kind == 3:
            out.append(f"Use the word '{word}' in a short sentence.")
        elif kind == 4:
            out.append(f"Name three things you might find in {topic}.")
        else:
            out.append(f"Describe {topic} in three words.")
    return out


def chat(rng: random.Random) -> list[str]:
    return [f"{CHAT[i % len(CHAT)]}{'' if i < len(CHAT) else ' ' + CHAT_SECOND[i % len(CHAT_SECOND)]}"
            for i in range(60)]


def main() -> None:
    rng = random.Random(15)
    kinds = {"facts": facts(), "arithmetic": arithmetic(rng), "formatting": formatting(rng),
             "instructions": instructions(rng), "chat": chat(rng)}
    rows = [{"messages": [{"role": "user", "content": p}], "kind": kind}
            for kind, prompts in kinds.items() for p in prompts]
    # Interleaved, so a `limit: N` subset covers every kind.
    rows = [rows[k * 60 + i] for i in range(60) for k in range(len(kinds))]
    OUT.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} prompts to {OUT}")


if __name__ == "__main__":
    main()
