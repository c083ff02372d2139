package zzglob

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	cases := []struct {
		pattern string
		yes     []string
		no      []string
	}{
		{"*.go", []string{"main.go", ".hidden.go", "x.go"}, []string{"a/main.go", "main.gox", "main.go/x"}},
		{"a/?.txt", []string{"a/b.txt", "a/é.txt"}, []string{"a/bc.txt", "a//.txt", "a/.txt"}},
		{"**", []string{"x", "a/b/c"}, nil},
		{"foo/**", []string{"foo/x", "foo/a/b/c"}, []string{"foo", "food/x", "bar/foo/x"}},
		{"**/*.jpg", []string{"x.jpg", "a/x.jpg", "a/b/c/x.jpg"}, []string{"x.jpeg", "a/x.jpg/y"}},
		{"a/**/b", []string{"a/b", "a/x/b", "a/x/y/b"}, []string{"a/xb", "b", "a/b/c"}},
		{"a/**/b/*.c", []string{"a/b/x.c", "a/1/2/b/x.c"}, []string{"a/b/x/y.c"}},
		{"src/**.go", []string{"src/a.go", "src/a/b/c.go"}, []string{"src/a.goo", "lib/a.go"}},
		{"[abc].txt", []string{"a.txt", "c.txt"}, []string{"d.txt", "ab.txt"}},
		{"[a-c]?", []string{"a1", "cz"}, []string{"d1", "a"}},
		{"[!a-c]x", []string{"dx", "zx"}, []string{"ax", "/x"}},
		{"[^a]x", []string{"bx"}, []string{"ax"}},
		{"[]a]", []string{"]", "a"}, []string{"b"}},
		{"[.-0]", []string{".", "0"}, []string{"/"}},
		{"{a,b}.txt", []string{"a.txt", "b.txt"}, []string{"c.txt", "{a,b}.txt"}},
		{"{src/**/*.go,go.{mod,sum}}", []string{"src/x.go", "src/a/b.go", "go.mod", "go.sum"}, []string{"go.work", "x.go"}},
		{"x{a,b{c,d}}y", []string{"xay", "xbcy", "xbdy"}, []string{"xby", "xbcdy"}},
		{"{single}", []string{"{single}"}, []string{"single"}},
		{`a\*b`, []string{"a*b"}, []string{"axb"}},
		{`\[x\]`, []string{"[x]"}, []string{"x"}},
		{"./fixtures/*.jpg", []string{"fixtures/a.jpg", "./fixtures/a.jpg"}, []string{"fixtures/a/b.jpg"}},
		{"/abs/*/f", []string{"/abs/x/f"}, []string{"abs/x/f", "/abs/f"}},
		{"version/VERSION", []string{"version/VERSION"}, []string{"version/VERSIONS"}},
		{"foo/baz", []string{"foo/baz"}, []string{"foo/baz/x"}},
	}
	for _, c := range cases {
		p, err := Parse(c.pattern)
		if err != nil {
			t.Fatalf("Parse(%q): %v", c.pattern, err)
		}
		for _, path := range c.yes {
			if !p.Match(path) {
				t.Errorf("%q should match %q", c.pattern, path)
			}
		}
		for _, path := range c.no {
			if p.Match(path) {
				t.Errorf("%q should not match %q", c.pattern, path)
			}
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, pattern := range []string{
		"bar/**/[asdf[[[[asdf", // from the agent's own tests: an unterminated class
		"{a{b{c{d",             // and unterminated braces
		"x[a/b]",
		"[]",
		"[z-a]",
	} {
		if _, err := Parse(pattern); err == nil {
			t.Errorf("Parse(%q) succeeded, want an error", pattern)
		}
	}
}

func TestExpandTilde(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	p, err := Parse("~/*.txt")
	if err != nil {
		t.Fatal(err)
	}
	if !p.Match(home + "/a.txt") {
		t.Errorf("~ was not expanded to %s", home)
	}
	p, err = Parse("~/*.txt", ExpandTilde(false))
	if err != nil {
		t.Fatal(err)
	}
	if !p.Match("~/a.txt") || p.Match(home+"/a.txt") {
		t.Error("ExpandTilde(false) must keep ~ literal")
	}
}

// tree makes the files (and symlinks "link -> target") below a new temporary folder and
// changes into it.
func tree(t *testing.T, entries ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, e := range entries {
		if name, target, ok := strings.Cut(e, " -> "); ok {
			must(t, os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755))
			must(t, os.Symlink(target, filepath.Join(dir, name)))
			continue
		}
		if strings.HasSuffix(e, "/") {
			must(t, os.MkdirAll(filepath.Join(dir, e), 0o755))
			continue
		}
		must(t, os.MkdirAll(filepath.Dir(filepath.Join(dir, e)), 0o755))
		must(t, os.WriteFile(filepath.Join(dir, e), []byte(e), 0o644))
	}
	t.Chdir(dir)
	return dir
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// collect globs the patterns and returns the matched paths (sorted) and the errors passed in.
func collect(t *testing.T, patterns []string, opts ...GlobOption) (paths []string, errs []string) {
	t.Helper()
	var parsed []*Pattern
	for _, s := range patterns {
		p, err := Parse(s)
		must(t, err)
		parsed = append(parsed, p)
	}
	err := MultiGlob(context.Background(), parsed, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			errs = append(errs, path)
			return nil
		}
		paths = append(paths, path)
		return nil
	}, opts...)
	must(t, err)
	slices.Sort(paths)
	return paths, errs
}

// fixtures mirrors the layout the agent's artifact tests use.
var fixtures = []string{
	"fixtures/Mr Freeze.jpg",
	"fixtures/folder/Commando.jpg",
	"fixtures/this is a folder with a space/The Terminator.jpg",
	"fixtures/gifs/Smile.gif",
	"fixtures/links/terminator/terminator2.jpg -> ../../this is a folder with a space/The Terminator.jpg",
	"fixtures/links/folder-link -> terminator",
	"fixtures/notes.txt",
}

func TestGlobDoubleStarAndSymlinks(t *testing.T) {
	tree(t, fixtures...)
	got, _ := collect(t, []string{"fixtures/**/*.jpg"}, TraverseSymlinks(false))
	want := []string{
		"fixtures/Mr Freeze.jpg",
		"fixtures/folder/Commando.jpg",
		"fixtures/links/terminator/terminator2.jpg",
		"fixtures/this is a folder with a space/The Terminator.jpg",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("without symlinks:\n got %q\nwant %q", got, want)
	}
	got, _ = collect(t, []string{"fixtures/**/*.jpg"}, TraverseSymlinks(true))
	want = append(want, "fixtures/links/folder-link/terminator2.jpg")
	slices.Sort(want)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("with symlinks:\n got %q\nwant %q", got, want)
	}
}

func TestMultiGlobReportsEachPathOnce(t *testing.T) {
	tree(t, fixtures...)
	got, errs := collect(t, []string{
		"dontmatchanything/*", "dontmatchanything.zip",
		"fixtures/**/*.jpg", "fixtures/folder/Commando.jpg", "fixtures/{folder,folder}/*.jpg",
	}, TraverseSymlinks(false))
	if len(got) != 4 {
		t.Errorf("got %d paths %q, want 4", len(got), got)
	}
	// Missing roots are passed to the callback with their error, as fs.WalkDir does.
	if !reflect.DeepEqual(errs, []string{"dontmatchanything", "dontmatchanything.zip"}) {
		t.Errorf("errors for %q, want the two missing roots", errs)
	}
}

func TestGlobRelativeAbsoluteAndDot(t *testing.T) {
	dir := tree(t, "a.go", "b.txt", "sub/c.go", "sub/deep/d.go", ".hidden/e.go")
	got, _ := collect(t, []string{"*.go"})
	if !reflect.DeepEqual(got, []string{"a.go"}) {
		t.Errorf("*.go: %q", got)
	}
	got, _ = collect(t, []string{"**/*.go"})
	want := []string{".hidden/e.go", "a.go", "sub/c.go", "sub/deep/d.go"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("**/*.go: %q", got)
	}
	got, _ = collect(t, []string{"./sub/*.go"})
	if !reflect.DeepEqual(got, []string{"./sub/c.go"}) {
		t.Errorf("./sub/*.go: %q", got)
	}
	got, _ = collect(t, []string{filepath.Join(dir, "sub", "**", "*.go")})
	want = []string{filepath.Join(dir, "sub/c.go"), filepath.Join(dir, "sub/deep/d.go")}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("absolute: %q", got)
	}
	got, _ = collect(t, []string{"sub/**"})
	want = []string{"sub/c.go", "sub/deep", "sub/deep/d.go"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("sub/**: %q", got)
	}
	got, _ = collect(t, []string{"{a.go,b.txt,nothing}"})
	if !reflect.DeepEqual(got, []string{"a.go", "b.txt"}) {
		t.Errorf("braces: %q", got)
	}
}

func TestWalkIntermediateDirs(t *testing.T) {
	tree(t, "vendor/x/go.mod", "vendor/y/z/go.mod", "vendor/y/other.txt", "other/go.mod")
	p, err := Parse("vendor/**/go.mod", ExpandTilde(false))
	must(t, err)
	var seen []string
	must(t, p.Glob(func(path string, d fs.DirEntry, err error) error {
		must(t, err)
		seen = append(seen, path)
		return nil
	}, WalkIntermediateDirs(true), TraverseSymlinks(false)))
	want := []string{"vendor", "vendor/x", "vendor/x/go.mod", "vendor/y", "vendor/y/z", "vendor/y/z/go.mod"}
	if !reflect.DeepEqual(seen, want) {
		t.Errorf("with intermediate dirs: %q, want %q", seen, want)
	}
}

func TestSkipDirAndSkipAll(t *testing.T) {
	tree(t, "a/1.txt", "a/b/2.txt", "c/3.txt")
	p, err := Parse("**/*")
	must(t, err)
	var seen []string
	must(t, p.Glob(func(path string, d fs.DirEntry, err error) error {
		seen = append(seen, path)
		if path == "a/b" {
			return fs.SkipDir
		}
		return nil
	}))
	if slices.Contains(seen, "a/b/2.txt") || !slices.Contains(seen, "c/3.txt") {
		t.Errorf("SkipDir: %q", seen)
	}
	seen = nil
	must(t, p.Glob(func(path string, d fs.DirEntry, err error) error {
		seen = append(seen, path)
		return fs.SkipAll
	}))
	if len(seen) != 1 {
		t.Errorf("SkipAll: %q", seen)
	}
	boom := errors.New("boom")
	if err := p.Glob(func(string, fs.DirEntry, error) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("callback error = %v, want boom", err)
	}
}

func TestSymlinkLoopTerminates(t *testing.T) {
	tree(t, "d/f.txt", "d/loop -> ..")
	got, _ := collect(t, []string{"**/*.txt"}, TraverseSymlinks(true))
	if !slices.Contains(got, "d/f.txt") || len(got) > 3 {
		t.Errorf("loop: %q", got)
	}
}

func TestLiteralPathAndContextCancel(t *testing.T) {
	tree(t, "x/y.txt")
	got, errs := collect(t, []string{"x/y.txt", "x/missing.txt"})
	if !reflect.DeepEqual(got, []string{"x/y.txt"}) || !reflect.DeepEqual(errs, []string{"x/missing.txt"}) {
		t.Errorf("literal: %q %q", got, errs)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p, _ := Parse("**")
	err := MultiGlob(ctx, []*Pattern{p}, func(string, fs.DirEntry, error) error { return nil })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
}
