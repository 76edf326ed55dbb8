#!/usr/bin/env bash
# Word count on a running Eddy server, through its REST API: creates the `lines` stream and the
# `word_counts` table (examples/wordcount/wordcount.sql), sends the lines of lines.txt (or of the
# file given as $1), prints the counts, then sends one more line and shows the counts move.
source "$(dirname "$0")/../lib.sh"
here="$(cd "$(dirname "$0")" && pwd)"
input="${1:-$here/lines.txt}"

eddy_wait
eddy_ksql "$(grep -v '^--' "$here/wordcount.sql")"

n=0
while IFS= read -r line; do
  n=$((n + 1))
  escaped="${line//\'/\'\'}"
  eddy_ksql "INSERT INTO lines (id, line) VALUES ('line-$n-$RANDOM', '$escaped');"
done < "$input"
echo "sent $n lines"

echo "word counts (word occurrences), most frequent first:"
eddy_pull "SELECT word, occurrences FROM word_counts;" | sort -k2,2nr -k1,1 | sed 's/^/  /'

eddy_ksql "INSERT INTO lines (id, line) VALUES ('one-more-$RANDOM', 'The end. THE END!');"
echo "after one more line ('The end. THE END!'):"
eddy_pull "SELECT word, occurrences FROM word_counts WHERE word = 'the' OR word = 'end';" \
  | sort | sed 's/^/  /'
