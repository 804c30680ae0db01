"""The prompts the app offers as examples, which `evaluate --parts examples` checks the shipped model draws."""

EXAMPLES = [  # seen captions, and held-out compositions (see weights/held_out.txt)
    "red heart", "panda", "flag: japan", "woman firefighter: dark skin tone", "grinning face", "green apple",
    "purple heart", "man technologist: medium skin tone", "people holding hands",
]
