// Added and special tokens: found in the text before any BPE, leftmost-longest (as HF's
// Aho-Corasick matcher does), honouring single_word, lstrip and rstrip.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace deepmoe {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

// A span of text: either plain text (token_id < 0) to be tokenized, or one added token.
struct TextSpan {
  size_t begin = 0, end = 0;
  int32_t token_id = -1;
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(std::vector<AddedToken> tokens);

  // Splits `text` into spans covering all of it (empty text gives no spans).
  std::vector<TextSpan> split(std::string_view text) const;
  bool empty() const { return tokens_.empty(); }

 private:
  struct Node {
    int32_t child_begin = 0, child_count = 0;  // children, sorted by byte, in edges_
    int32_t token = -1;                        // index into tokens_ when a token ends here
  };
  struct Edge {
    unsigned char byte;
    int32_t node;
  };
  // Index into tokens_ of the longest token that starts at text[pos], or -1.
  int32_t longest_at(std::string_view text, size_t pos, size_t& length) const;

  std::vector<AddedToken> tokens_;
  std::vector<Node> nodes_;
  std::vector<Edge> edges_;
  bool first_byte_[256] = {};
};

}  // namespace deepmoe
