#include "compiler/calibration_prompts.h"

namespace kiln {

const std::vector<std::string>& builtin_calibration_prompts() {
  static const std::vector<std::string> prompts = {
      "Once upon a time, in a small village at the edge of a forest, there lived a girl named Mira who loved to "
      "collect smooth stones from the river. Every morning she walked down the hill with her basket, and every "
      "evening she came back with something new to show her little brother.",
      "The water cycle describes how water moves between the oceans, the air and the land. Heat from the sun "
      "evaporates water from the surface of the sea; the vapour rises, cools and condenses into clouds, and "
      "eventually falls back as rain or snow, which flows through rivers to the sea again.",
      "\"Are you coming with us tomorrow?\" asked Tom.\n\"I can't,\" said Ana. \"I promised my grandmother I "
      "would help her paint the fence.\"\n\"Then we'll wait until Sunday,\" Tom replied, smiling. \"The lake "
      "isn't going anywhere.\"",
      "To bake a simple loaf of bread, mix 500 grams of flour, 10 grams of salt, 7 grams of dried yeast and 320 "
      "millilitres of warm water. Knead the dough for ten minutes, let it rise for an hour, shape it, let it rise "
      "again for forty minutes, then bake at 220 degrees Celsius for about thirty-five minutes.",
      "def fibonacci(n):\n    \"\"\"Return the first n Fibonacci numbers.\"\"\"\n    a, b = 0, 1\n    out = []\n"
      "    for _ in range(n):\n        out.append(a)\n        a, b = b, a + b\n    return out\n\nprint(fibonacci(10))",
      "A hash table stores key-value pairs in an array of buckets. A hash function maps each key to a bucket "
      "index; when two keys land in the same bucket, the table resolves the collision by chaining or by probing "
      "for another free slot. Lookups take constant time on average.",
      "Shopping list for the week: apples, carrots, two loaves of bread, a dozen eggs, rice, olive oil, tomatoes, "
      "cheese, coffee, and something for Friday's dinner with the neighbours.",
      "In 1969, Apollo 11 landed on the Moon. Neil Armstrong and Buzz Aldrin spent about two and a half hours "
      "outside the lunar module, collecting 21.5 kilograms of rock and soil, while Michael Collins orbited above "
      "in the command module.",
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nCan you explain what a "
      "neural network is in two sentences?<|im_end|>\n<|im_start|>assistant\nA neural network is a model made "
      "of layers of simple units that each combine their inputs with learned weights. By adjusting those weights "
      "on examples, it learns to map inputs such as images or text to useful outputs.<|im_end|>",
      "The old lighthouse keeper climbed the spiral stairs one last time. Outside, the storm pressed against the "
      "glass, and far below the waves broke white over the rocks. He lit the lamp, as he had done for forty "
      "years, and watched its beam sweep across the dark water.",
      "Photosynthesis takes place in the chloroplasts of plant cells. Using the energy of sunlight, the plant "
      "turns carbon dioxide and water into glucose and releases oxygen. The glucose feeds the plant's growth, "
      "and the oxygen is what most living things breathe.",
      "Dear Sam, thank you for the lovely letter and the photographs from your trip. The mountains look "
      "beautiful, and I laughed at the picture of the goat eating your map. Let me know when you are back in "
      "town so we can have lunch. Best wishes, Lena.",
      "Step 1: Turn off the power at the breaker.\nStep 2: Remove the cover plate and unscrew the old switch.\n"
      "Step 3: Connect the wires to the new switch exactly as they were connected to the old one.\nStep 4: "
      "Screw the switch back into the box, replace the cover and turn the power on again.",
      "The quarterly report shows revenue of 4.2 million dollars, up 12 percent from the same quarter last year. "
      "Operating costs rose 5 percent, mostly because of new hires in support and engineering, and the company "
      "expects to reach break-even by the end of the next fiscal year.",
      "SELECT customers.name, COUNT(orders.id) AS order_count\nFROM customers\nJOIN orders ON orders.customer_id "
      "= customers.id\nWHERE orders.created_at >= '2024-01-01'\nGROUP BY customers.name\nORDER BY order_count DESC\n"
      "LIMIT 10;",
      "The little dog barked at the moon all night. In the morning, tired and sleepy, he curled up next to the "
      "cat, who had slept perfectly well and was not at all impressed by his adventure.",
      "Why is the sky blue? Sunlight contains every colour, but the molecules of the air scatter short "
      "wavelengths far more than long ones. Blue light is scattered across the whole sky and reaches our eyes "
      "from every direction, while the sun itself looks slightly yellow.",
      "Meeting notes, Tuesday: the team agreed to ship the new search page next week. Maria will finish the "
      "accessibility review, Jonas will update the documentation, and everyone will test the release candidate "
      "on Thursday afternoon. Open question: do we need a feature flag?",
      "The recipe calls for three eggs, but we only have two, so let's add a spoonful of yoghurt instead. It "
      "usually works for pancakes, and nobody ever notices the difference.",
      "Rivers shape the land over thousands of years. Fast water in the mountains cuts deep valleys; slower water "
      "in the plains drops sand and mud, builds wide floodplains and winds in loops called meanders, which may one "
      "day be cut off to form lakes.",
      "#include <stdio.h>\n\nint main(void) {\n  int total = 0;\n  for (int i = 1; i <= 100; ++i) total += i;\n"
      "  printf(\"sum = %d\\n\", total);\n  return 0;\n}",
      "Translation practice: 'Good morning, how are you?' becomes 'Bonjour, comment allez-vous ?' in French, "
      "'Buenos días, ¿cómo estás?' in Spanish and 'Guten Morgen, wie geht es Ihnen?' in German.",
      "<|im_start|>user\nWrite a haiku about autumn.<|im_end|>\n<|im_start|>assistant\nRed leaves drift and fall,\n"
      "the garden breathes out slowly,\ncold light on the wall.<|im_end|>",
      "The train left the station at 7:45 and arrived in the city two hours and ten minutes later. Most "
      "passengers read or slept; a child by the window counted cows, and had reached one hundred and three by "
      "the time the fields gave way to houses.",
      "Compound interest means that interest is earned on previous interest. Saving 100 dollars at 5 percent a "
      "year gives 105 dollars after one year, 110.25 after two and about 162.89 after ten, without adding "
      "anything more.",
      "She opened the box carefully. Inside, wrapped in soft paper, was a small wooden bird with painted wings. "
      "Her grandfather had carved it when he was a boy, and now, after all these years, it was hers.",
      "Frequently asked questions. How do I reset my password? Open the login page, choose 'Forgot password', and "
      "follow the link we send to your email address. The link is valid for one hour.",
      "Volcanoes form where molten rock from deep inside the Earth reaches the surface. Some erupt explosively, "
      "throwing ash high into the air; others release slow rivers of lava that cool into new land, as on the "
      "islands of Hawaii.",
      "The committee reviewed 48 applications and invited 12 candidates to interview. After two rounds, three "
      "were offered positions, starting on the first of March, with a six-month probation period.",
      "JSON example: {\"name\": \"kiln\", \"version\": \"0.1.0\", \"features\": [\"quantization\", \"paged kv\", "
      "\"continuous batching\"], \"license\": \"Apache-2.0\", \"stars\": 1280}",
      "Once the rain stopped, the children ran outside to jump in the puddles. Their mother called after them to "
      "put on their boots, but it was far too late for that, and she laughed as she watched them splash.",
      "The theory of evolution by natural selection explains how populations change over generations. Individuals "
      "with traits that help them survive and reproduce leave more offspring, so those traits become more common "
      "over time.",
  };
  return prompts;
}

}  // namespace kiln
