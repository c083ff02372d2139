// Package zzglob matches and walks file-system glob patterns.
//
// This is stackgen's own stand-in for the package of the same import path that
// github.com/buildkite/agent/v3 imports (that module cannot be fetched through the Go module
// proxy). It offers the names the agent uses — Parse with ExpandTilde, Pattern.Match,
// Pattern.Glob, MultiGlob, WalkIntermediateDirs and TraverseSymlinks — with these semantics:
//
//   - '*' matches any run of characters within one path segment (never '/'), '?' one
//     character other than '/', and "[...]" one character of a class: ranges ("a-z"),
//     negation ("[!...]" or "[^...]"); '/' is never matched by a class.
//   - "**" as a whole segment matches any number of segments: zero or more in the middle or
//     at the start ("a/**/b" matches "a/b" and "a/x/y/b"), one or more at the end ("a/**"
//     matches everything below a, not a itself). "**" inside a segment ("a**b") matches any
//     characters including '/'.
//   - "{x,y,z}" matches any of the comma-separated alternatives, which may contain any other
//     syntax including '/' and nested braces. A group without a comma is literal text.
//   - '\' makes the next character literal.
//   - A leading "~" or "~/" is the user's home directory (unless ExpandTilde(false)).
//   - Paths are matched as written, with '/' separators; dot files are not special.
//
// Unterminated classes and braces are errors.
package zzglob

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
)

// maxAlternatives bounds brace expansion ("{a,b}{c,d}..." multiplies).
const maxAlternatives = 4096

// Pattern is a parsed glob pattern.
type Pattern struct {
	source string
	alts   []*alternative
}

// alternative is one brace-free expansion of a pattern.
type alternative struct {
	root  string         // literal leading directory, as written ("" when there is none)
	segs  []segment      // the segments below root
	whole *regexp.Regexp // the full pattern, for Match and for final decisions
}

type segKind int

const (
	segLiteral  segKind = iota // no meta characters
	segMeta                    // '*', '?' or classes within one segment
	segGlobstar                // "**" as a whole segment
	segWild                    // "**" with other text in one segment: crosses '/'
)

type segment struct {
	kind    segKind
	literal string         // segLiteral: the unescaped name
	re      *regexp.Regexp // segMeta: anchored matcher of one name
}

// ParseOption configures Parse.
type ParseOption func(*parseConfig)

type parseConfig struct{ expandTilde bool }

// ExpandTilde says whether a leading "~" means the user's home directory (default true).
func ExpandTilde(expand bool) ParseOption {
	return func(c *parseConfig) { c.expandTilde = expand }
}

// Parse parses a glob pattern.
func Parse(pattern string, opts ...ParseOption) (*Pattern, error) {
	cfg := parseConfig{expandTilde: true}
	for _, o := range opts {
		o(&cfg)
	}
	expanded := pattern
	if cfg.expandTilde && (expanded == "~" || strings.HasPrefix(expanded, "~/")) {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil, fmt.Errorf("expanding ~ in %q: %w", pattern, err)
		}
		expanded = escapeLiteral(home) + expanded[1:]
	}
	texts, err := expandBraces(expanded)
	if err != nil {
		return nil, fmt.Errorf("parsing glob %q: %w", pattern, err)
	}
	p := &Pattern{source: pattern}
	for _, t := range texts {
		a, err := parseAlternative(t)
		if err != nil {
			return nil, fmt.Errorf("parsing glob %q: %w", pattern, err)
		}
		p.alts = append(p.alts, a)
	}
	return p, nil
}

// String returns the pattern as given to Parse.
func (p *Pattern) String() string { return p.source }

// Match reports whether path matches the pattern.
func (p *Pattern) Match(path string) bool {
	path = strings.ReplaceAll(path, string(os.PathSeparator), "/")
	path = trimDot(path)
	for _, a := range p.alts {
		if a.whole.MatchString(path) {
			return true
		}
	}
	return false
}

// escapeLiteral escapes every glob meta character of s.
func escapeLiteral(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`\*?[]{},`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// expandBraces expands every top-level "{a,b}" group, recursively, keeping escapes intact.
func expandBraces(s string) ([]string, error) {
	open, close, commas, err := firstBraceGroup(s)
	if err != nil {
		return nil, err
	}
	if open < 0 {
		return []string{s}, nil
	}
	prefix, suffix := s[:open], s[close+1:]
	if len(commas) == 0 {
		// "{x}" is literal text: keep the braces (escaped), expand what follows.
		rest, err := expandBraces(suffix)
		if err != nil {
			return nil, err
		}
		inner, err := expandBraces(s[open+1 : close])
		if err != nil {
			return nil, err
		}
		var out []string
		for _, in := range inner {
			for _, r := range rest {
				out = append(out, prefix+`\{`+in+`\}`+r)
			}
		}
		return out, nil
	}
	var parts []string
	start := open + 1
	for _, c := range commas {
		parts = append(parts, s[start:c])
		start = c + 1
	}
	parts = append(parts, s[start:close])
	rest, err := expandBraces(suffix)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, part := range parts {
		inner, err := expandBraces(part)
		if err != nil {
			return nil, err
		}
		for _, in := range inner {
			for _, r := range rest {
				out = append(out, prefix+in+r)
				if len(out) > maxAlternatives {
					return nil, fmt.Errorf("braces expand to more than %d alternatives", maxAlternatives)
				}
			}
		}
	}
	return out, nil
}

// firstBraceGroup finds the first unescaped '{' outside a character class, its matching '}'
// and the positions of its top-level commas. open is -1 when there is no group.
func firstBraceGroup(s string) (open, close int, commas []int, err error) {
	open = -1
	depth := 0
	inClass := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\':
			i++
		case inClass:
			if c == ']' {
				inClass = false
			}
		case c == '[':
			inClass = true
			// A ']' right after '[' (or "[!", "[^") is a member, not the end.
			j := i + 1
			if j < len(s) && (s[j] == '!' || s[j] == '^') {
				j++
			}
			if j < len(s) && s[j] == ']' {
				i = j
			}
		case c == '{':
			if depth == 0 {
				open = i
			}
			depth++
		case c == '}' && depth > 0:
			depth--
			if depth == 0 {
				return open, i, commas, nil
			}
		case c == ',' && depth == 1:
			commas = append(commas, i)
		}
	}
	if depth > 0 {
		return -1, -1, nil, errors.New("unterminated '{'")
	}
	return -1, -1, nil, nil
}

// splitSegments splits on unescaped '/' outside character classes.
func splitSegments(s string) ([]string, error) {
	var segs []string
	start := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '[':
			end, err := classEnd(s, i)
			if err != nil {
				return nil, err
			}
			i = end
		case '/':
			segs = append(segs, s[start:i])
			start = i + 1
		}
	}
	return append(segs, s[start:]), nil
}

// classEnd returns the index of the ']' closing the class that opens at s[i].
func classEnd(s string, i int) (int, error) {
	j := i + 1
	if j < len(s) && (s[j] == '!' || s[j] == '^') {
		j++
	}
	if j < len(s) && s[j] == ']' {
		j++ // a leading ']' is a member
	}
	for ; j < len(s); j++ {
		switch s[j] {
		case '\\':
			j++
		case '/':
			return 0, fmt.Errorf("unterminated character class at offset %d", i)
		case ']':
			return j, nil
		}
	}
	return 0, fmt.Errorf("unterminated character class at offset %d", i)
}

func parseAlternative(text string) (*alternative, error) {
	raw, err := splitSegments(text)
	if err != nil {
		return nil, err
	}
	absolute := len(raw) > 1 && raw[0] == ""
	if absolute {
		raw = raw[1:]
	}
	// Empty segments ("a//b", a trailing '/') carry no meaning.
	var parts []string
	for _, r := range raw {
		if r != "" {
			parts = append(parts, r)
		}
	}

	a := &alternative{}
	var segs []segment
	for _, part := range parts {
		seg, err := parseSegment(part)
		if err != nil {
			return nil, err
		}
		segs = append(segs, seg)
	}
	// The literal leading directories are the walk's root.
	n := 0
	var rootParts []string
	for n < len(segs)-1 && segs[n].kind == segLiteral {
		rootParts = append(rootParts, segs[n].literal)
		n++
	}
	if n == len(segs)-1 && segs[n].kind == segLiteral { // a pattern without meta characters
		rootParts = append(rootParts, segs[n].literal)
		n++
	}
	a.root = strings.Join(rootParts, "/")
	if absolute {
		a.root = "/" + a.root
	}
	a.segs = segs[n:]

	var re strings.Builder
	re.WriteString("^")
	if absolute {
		re.WriteString("/")
	}
	// Leading "./" segments are matched against paths with their "./" trimmed (trimDot).
	skip := 0
	for skip < len(segs)-1 && segs[skip].kind == segLiteral && segs[skip].literal == "." {
		skip++
	}
	for i, seg := range segs {
		if i < skip {
			continue
		}
		last := i == len(segs)-1
		switch seg.kind {
		case segGlobstar:
			if last {
				re.WriteString(".+")
			} else {
				re.WriteString("(?:.*/)?")
			}
			continue // a middle "**" brings its own '/'
		case segLiteral:
			re.WriteString(regexp.QuoteMeta(seg.literal))
		default:
			frag, err := segmentRegexp(parts[i])
			if err != nil {
				return nil, err
			}
			re.WriteString(frag)
		}
		if !last {
			re.WriteString("/")
		}
	}
	re.WriteString("$")
	a.whole, err = regexp.Compile(re.String())
	if err != nil {
		return nil, err
	}
	return a, nil
}

func parseSegment(part string) (segment, error) {
	if part == "**" {
		return segment{kind: segGlobstar}, nil
	}
	literal, isLiteral := unescapeLiteral(part)
	if isLiteral {
		return segment{kind: segLiteral, literal: literal}, nil
	}
	frag, err := segmentRegexp(part)
	if err != nil {
		return segment{}, err
	}
	re, err := regexp.Compile("^" + frag + "$")
	if err != nil {
		return segment{}, err
	}
	if hasDoubleStar(part) {
		return segment{kind: segWild, re: re}, nil
	}
	return segment{kind: segMeta, re: re}, nil
}

// unescapeLiteral returns part without escapes, and whether it has no meta characters.
func unescapeLiteral(part string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(part); i++ {
		c := part[i]
		switch c {
		case '\\':
			if i+1 < len(part) {
				i++
				b.WriteByte(part[i])
			} else {
				b.WriteByte(c)
			}
		case '*', '?', '[':
			return "", false
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), true
}

// segmentRegexp translates one segment (no '/' outside escapes) into a regexp fragment.
func segmentRegexp(part string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(part); i++ {
		c := part[i]
		switch c {
		case '\\':
			if i+1 < len(part) {
				i++
			}
			b.WriteString(regexp.QuoteMeta(string(part[i])))
		case '*':
			if i+1 < len(part) && part[i+1] == '*' {
				for i+1 < len(part) && part[i+1] == '*' {
					i++
				}
				b.WriteString(".*")
			} else {
				b.WriteString("[^/]*")
			}
		case '?':
			b.WriteString("[^/]")
		case '[':
			end, err := classEnd(part, i)
			if err != nil {
				return "", err
			}
			cls, err := classRegexp(part[i+1 : end])
			if err != nil {
				return "", err
			}
			b.WriteString(cls)
			i = end
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	return b.String(), nil
}

// classRegexp translates the inside of "[...]" into a regexp class that never matches '/'.
func classRegexp(body string) (string, error) {
	negate := false
	if strings.HasPrefix(body, "!") || strings.HasPrefix(body, "^") {
		negate = true
		body = body[1:]
	}
	// Members as runes, escapes resolved; a '-' between two members makes a range.
	type item struct {
		r       rune
		escaped bool
	}
	var items []item
	rs := []rune(body)
	for i := 0; i < len(rs); i++ {
		if rs[i] == '\\' && i+1 < len(rs) {
			i++
			items = append(items, item{rs[i], true})
			continue
		}
		items = append(items, item{rs[i], false})
	}
	if len(items) == 0 {
		return "", errors.New("empty character class")
	}
	type span struct{ lo, hi rune }
	var spans []span
	for i := 0; i < len(items); i++ {
		if i+2 < len(items) && items[i+1].r == '-' && !items[i+1].escaped {
			lo, hi := items[i].r, items[i+2].r
			if lo > hi {
				return "", fmt.Errorf("invalid range %c-%c in character class", lo, hi)
			}
			spans = append(spans, span{lo, hi})
			i += 2
			continue
		}
		spans = append(spans, span{items[i].r, items[i].r})
	}
	var b strings.Builder
	b.WriteString("[")
	if negate {
		b.WriteString("^/")
	}
	quote := func(r rune) string {
		if strings.ContainsRune(`\[]^-`, r) {
			return `\` + string(r)
		}
		return string(r)
	}
	for _, sp := range spans {
		// '/' is never a member: split a range around it.
		parts := []span{sp}
		if !negate && sp.lo <= '/' && '/' <= sp.hi {
			parts = nil
			if sp.lo < '/' {
				parts = append(parts, span{sp.lo, '/' - 1})
			}
			if sp.hi > '/' {
				parts = append(parts, span{'/' + 1, sp.hi})
			}
		}
		for _, p := range parts {
			if p.lo == p.hi {
				b.WriteString(quote(p.lo))
			} else {
				b.WriteString(quote(p.lo) + "-" + quote(p.hi))
			}
		}
	}
	b.WriteString("]")
	if b.String() == "[]" { // only '/' was asked for: nothing can match
		return `[^\x00-\x{10FFFF}]`, nil
	}
	return b.String(), nil
}

// hasDoubleStar reports whether part has an unescaped "**" outside character classes.
func hasDoubleStar(part string) bool {
	for i := 0; i < len(part); i++ {
		switch part[i] {
		case '\\':
			i++
		case '[':
			if end, err := classEnd(part, i); err == nil {
				i = end
			}
		case '*':
			if i+1 < len(part) && part[i+1] == '*' {
				return true
			}
		}
	}
	return false
}

// trimDot removes leading "./" (and "./" repeated) from a path.
func trimDot(path string) string {
	for strings.HasPrefix(path, "./") {
		path = strings.TrimLeft(path[2:], "/")
	}
	return path
}
