#include "launcher/soak_draw.h"

#include <vector>

namespace tessera::launcher {

int32_t Draw(std::mt19937_64& random, int32_t low, int32_t high) {
  return std::uniform_int_distribution<int32_t>(low, high)(random);
}

bool Chance(std::mt19937_64& random, double p) { return std::bernoulli_distribution(p)(random); }

const std::string& RandomWord(std::mt19937_64& random) {
  static const std::vector<std::string>* const words = [] {
    auto* made = new std::vector<std::string>();
    std::mt19937_64 fixed(0x50a6);
    for (int i = 0; i < 512; ++i) {
      std::string& word = made->emplace_back();
      for (int length = Draw(fixed, 1, 9); length > 0; --length) {
        word.push_back(static_cast<char>('a' + Draw(fixed, 0, 25)));
      }
    }
    return made;
  }();
  return (*words)[Draw(random, 0, static_cast<int32_t>(words->size()) - 1)];
}

std::string RandomText(std::mt19937_64& random, int64_t bytes) {
  std::string text;
  text.reserve(bytes + 10);
  while (static_cast<int64_t>(text.size()) < bytes) {
    if (!text.empty()) text.push_back(' ');
    text += RandomWord(random);
  }
  return text;
}

void DrawPrompt(std::mt19937_64& random, const std::string& model, int32_t vocab,
                v1::GenerateRequest& request) {
  request.set_model(model);
  if (Chance(random, 0.5)) {
    request.set_prompt(RandomText(random, Draw(random, 4, 48)));
  } else {
    const int32_t length = Draw(random, 4, 32);
    for (int32_t i = 0; i < length; ++i) request.add_prompt_tokens(Draw(random, 0, vocab - 1));
  }
}

}  // namespace tessera::launcher
