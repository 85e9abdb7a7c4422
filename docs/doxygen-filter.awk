# Doxygen input filter for include/gofin/*.hpp (docs/Doxyfile: FILTER_PATTERNS).
# The headers document declarations with plain // comments. This turns a whole-line //
# comment into a /// documentation comment when it stands at namespace or class scope, and
# leaves comments inside function bodies (implementation notes) as they are.
# Braces are counted per line: a `{` on a line that opens a namespace, class, struct, union,
# enum or extern "C" block opens a scope; any other `{` opens a body.
{
  line = $0
  if (line ~ /^[ \t]*\/\/([^\/!]|$)/) {
    if (bodies == 0) sub(/\/\//, "///", line)
    print line
    next
  }
  code = $0
  gsub(/"([^"\\]|\\.)*"/, "\"\"", code)   # string literals
  gsub(/'([^'\\]|\\.)*'/, "''", code)     # character literals
  sub(/\/\/.*/, "", code)                 # trailing comment
  scope = (code ~ /^[ \t]*(template[ \t]*<.*>[ \t]*)?(class|struct|union|namespace|enum)([ \t]|$)/ \
           || code ~ /^[ \t]*extern[ \t]+""/)
  n = length(code)
  for (i = 1; i <= n; i++) {
    c = substr(code, i, 1)
    if (c == "{") {
      kind[++depth] = scope ? "s" : "b"
      if (!scope) bodies++
    } else if (c == "}" && depth > 0) {
      if (kind[depth] == "b") bodies--
      depth--
    }
  }
  print line
}
