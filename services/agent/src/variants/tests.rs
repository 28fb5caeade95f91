use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ferry_release::{ArtifactSpec, Name, pack};
use tempfile::TempDir;

use super::*;

const CONFIG_JSON: &str = r##"{
    "api": {"endpoint": "https://api.example", "timeout": 30},
    "theme": {"colors": ["#000000", "#ffffff"]}
}
"##;

const SETTINGS_YAML: &str = "title: Base\nfeatures:\n  chat: false\n  video: true\n";

/// A base release on disk and the override files of two variants.
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let f = Self { dir };
        f.file("dist/web/index.html", "<html>base</html>");
        f.file("dist/web/img/logo.png", "base logo");
        f.file("dist/web/img/promo.png", "promo");
        f.file("dist/web/config.json", CONFIG_JSON);
        f.file("dist/web/settings.yaml", SETTINGS_YAML);
        f.file("dist/web/broken.json", "{\"a\": ");
        f.file("dist/web/notes.txt", "plain text");
        std::os::unix::fs::symlink("index.html", f.path("dist/web/alias.html")).unwrap();
        f.file("dist/app.apk", "base apk");
        f.file("openapi.json", r#"{"info":{"title":"Base API","version":"1"}}"#);
        f.file("variants/acme/logo.png", "acme logo");
        f.file("variants/acme/extra.png", "acme extra");
        f.file("variants/north/app.apk", "north apk");
        f
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn file(&self, rel: &str, content: &str) {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap()
    }

    /// Writes `text` as the variants file and loads it.
    fn load(&self, text: &str) -> Result<Variants, VariantsError> {
        self.file("ferry.variants.toml", text);
        Variants::load(&self.path("ferry.variants.toml"))
    }

    /// The problems of a file that must not load.
    fn problems(&self, text: &str) -> Vec<Problem> {
        let err = self.load(text).expect_err("the file must be refused");
        assert!(!err.problems().is_empty(), "{err}");
        err.problems().to_vec()
    }
}

/// The base artifacts, lines 1 to 7 of every file below.
const BASE: &str = r#"[base.artifacts.web]
path = "dist/web"
[base.artifacts.mobile]
path = "dist/app.apk"
platforms = ["android"]
[base.artifacts.api]
path = "openapi.json"
"#;

/// Three tenants: acme alone with edits of every kind, globex and initech
/// sharing a variant that substitutes the mobile package.
const THREE_TENANTS: &str = r##"app = "crm"

[base.artifacts.web]
path = "dist/web"
[base.artifacts.mobile]
path = "dist/app.apk"
platforms = ["android"]
[base.artifacts.api]
path = "openapi.json"

[variants.acme]
tenants = ["acme"]

[variants.acme.web]
remove = ["img/promo.png"]
replace = { "img/logo.png" = "variants/acme/logo.png" }
add = { "img/extra.png" = "variants/acme/extra.png" }
[variants.acme.web.set."config.json"]
"/api/endpoint" = "https://api.acme.example"
"/theme/colors/0" = "#ff0000"
[variants.acme.web.set."settings.yaml"]
"/features/chat" = true
"/title" = { text = "ACME", size = 2 }

[variants.acme.api.set.""]
"/info/title" = "ACME API"

[variants.north]
tenants = ["globex", "initech"]
[variants.north.mobile]
source = "variants/north/app.apk"
"##;

fn name(s: &str) -> Name {
    Name::parse("tenant", s).unwrap()
}

fn ino(path: &Path) -> u64 {
    fs::metadata(path).unwrap().ino()
}

fn version() -> ferry_release::Version {
    "1.0.0".parse().unwrap()
}

/// The files of `dir`, relative, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_str().unwrap().to_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn lists_tenants_in_file_order_with_their_variant() {
    let f = Fixture::new();
    let v = f.load(THREE_TENANTS).unwrap();
    assert_eq!(v.app().map(Name::as_str), Some("crm"));
    let tenants: Vec<(String, String)> = v.tenants().into_iter().map(|(t, v)| (t.to_string(), v)).collect();
    assert_eq!(
        tenants,
        [("acme".into(), "acme".into()), ("globex".into(), "north".into()), ("initech".into(), "north".into())]
    );
    let p = v.problem_at_tenant(&name("initech"), "tenant \"initech\" is unknown to the registry".into());
    assert_eq!((p.line, p.column), (29, 22));
    assert_eq!(
        p.to_string(),
        format!("{}:29:22: tenant \"initech\" is unknown to the registry", f.path("ferry.variants.toml").display())
    );
}

#[test]
fn renders_acme_with_every_override_and_links_the_rest() {
    let f = Fixture::new();
    let v = f.load(THREE_TENANTS).unwrap();
    let out = f.path("out/acme");
    fs::create_dir_all(f.path("out")).unwrap();
    let specs = v.render(&name("acme"), &out, LinkMode::HardLink).unwrap();

    let summary: Vec<(&str, Vec<&str>, PathBuf)> = specs
        .iter()
        .map(|s| (s.name.as_str(), s.platforms.iter().map(Name::as_str).collect(), s.path.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("web", vec![], out.join("web")),
            ("mobile", vec!["android"], out.join("mobile/app.apk")),
            ("api", vec![], out.join("api/openapi.json")),
        ]
    );
    assert_eq!(
        listing(&out.join("web")),
        [
            "alias.html",
            "broken.json",
            "config.json",
            "img/extra.png",
            "img/logo.png",
            "index.html",
            "notes.txt",
            "settings.yaml"
        ]
    );
    assert_eq!(f.read("out/acme/web/img/logo.png"), "acme logo");
    assert_eq!(f.read("out/acme/web/img/extra.png"), "acme extra");
    assert!(!out.join("web/img/promo.png").exists());
    assert_eq!(f.read("out/acme/web/index.html"), "<html>base</html>");
    assert_eq!(
        f.read("out/acme/web/config.json"),
        "{\n  \"api\": {\n    \"endpoint\": \"https://api.acme.example\",\n    \"timeout\": 30\n  },\n  \
         \"theme\": {\n    \"colors\": [\n      \"#ff0000\",\n      \"#ffffff\"\n    ]\n  }\n}\n"
    );
    let settings: serde_json::Value = serde_saphyr::from_str(&f.read("out/acme/web/settings.yaml")).unwrap();
    assert_eq!(
        settings,
        serde_json::json!({"title": {"size": 2, "text": "ACME"}, "features": {"chat": true, "video": true}})
    );
    assert_eq!(f.read("out/acme/api/openapi.json"), r#"{"info":{"title":"ACME API","version":"1"}}"#);
    assert_eq!(f.read("out/acme/mobile/app.apk"), "base apk");

    // Unchanged files and override sources are hard links; a linked file
    // of the base is rendered as a regular file holding its target.
    assert_eq!(ino(&out.join("web/index.html")), ino(&f.path("dist/web/index.html")));
    assert_eq!(ino(&out.join("web/notes.txt")), ino(&f.path("dist/web/notes.txt")));
    assert_eq!(ino(&out.join("mobile/app.apk")), ino(&f.path("dist/app.apk")));
    assert_eq!(ino(&out.join("web/img/logo.png")), ino(&f.path("variants/acme/logo.png")));
    assert!(fs::symlink_metadata(out.join("web/alias.html")).unwrap().file_type().is_file());
    assert_eq!(ino(&out.join("web/alias.html")), ino(&f.path("dist/web/index.html")));
    // Edited files are new.
    assert_ne!(ino(&out.join("web/config.json")), ino(&f.path("dist/web/config.json")));
    // The base is untouched.
    assert_eq!(f.read("dist/web/config.json"), CONFIG_JSON);
    assert_eq!(f.read("dist/web/img/logo.png"), "base logo");

    let manifest = pack(version(), &specs, &|_| {}).unwrap();
    let web = manifest.artifacts.iter().find(|a| a.name.as_str() == "web").unwrap();
    assert_eq!(web.files.len(), 8);
}

#[test]
fn renders_tenants_sharing_a_variant_alike_and_copies_in_copy_mode() {
    let f = Fixture::new();
    let v = f.load(THREE_TENANTS).unwrap();
    let base_specs: Vec<ArtifactSpec> = ["web=dist/web", "mobile@android=dist/app.apk", "api=openapi.json"]
        .iter()
        .map(|s| {
            let mut spec = ArtifactSpec::parse(s).unwrap();
            spec.path = f.path(spec.path.to_str().unwrap());
            spec
        })
        .collect();
    let base = pack(version(), &base_specs, &|_| {}).unwrap();
    for tenant in ["globex", "initech"] {
        let out = f.path(tenant);
        let specs = v.render(&name(tenant), &out, LinkMode::Copy).unwrap();
        assert_eq!(f.read(&format!("{tenant}/mobile/app.apk")), "north apk");
        assert_eq!(f.read(&format!("{tenant}/web/config.json")), CONFIG_JSON);
        assert_eq!(f.read(&format!("{tenant}/web/img/promo.png")), "promo");
        // Copies, not links: editing the render cannot alter the base.
        assert_ne!(ino(&out.join("web/index.html")), ino(&f.path("dist/web/index.html")));
        assert_ne!(ino(&out.join("mobile/app.apk")), ino(&f.path("variants/north/app.apk")));
        assert_ne!(ino(&out.join("api/openapi.json")), ino(&f.path("openapi.json")));
        // What the variant leaves alone packs exactly as the base does,
        // every file the walk of packing finds included.
        let rendered = pack(version(), &specs, &|_| {}).unwrap();
        assert_eq!(rendered.artifacts[2], base.artifacts[2], "web");
        assert_eq!(rendered.artifacts[0], base.artifacts[0], "api");
        assert_ne!(rendered.artifacts[1], base.artifacts[1], "mobile");
    }
}

#[test]
fn render_refuses_an_unknown_tenant_naming_the_known_ones() {
    let f = Fixture::new();
    let v = f.load(THREE_TENANTS).unwrap();
    let err = v.render(&name("umbrella"), &f.path("out"), LinkMode::Copy).unwrap_err();
    assert!(matches!(err, VariantsError::UnknownTenant { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("\"umbrella\""), "{message}");
    assert!(message.ends_with("its tenants are: acme, globex, initech"), "{message}");
    assert!(!f.path("out").exists());
}

#[test]
fn render_refuses_a_non_empty_output_and_accepts_an_empty_one() {
    let f = Fixture::new();
    let v = f.load(THREE_TENANTS).unwrap();
    f.file("out/keep.txt", "mine");
    let err = v.render(&name("acme"), &f.path("out"), LinkMode::Copy).unwrap_err();
    assert!(matches!(err, VariantsError::OutputExists { .. }), "{err}");
    assert_eq!(listing(&f.path("out")), ["keep.txt"]);
    f.file("plain-file", "x");
    let err = v.render(&name("acme"), &f.path("plain-file"), LinkMode::Copy).unwrap_err();
    assert!(matches!(err, VariantsError::OutputExists { .. }), "{err}");

    fs::create_dir(f.path("empty")).unwrap();
    v.render(&name("acme"), &f.path("empty"), LinkMode::Copy).unwrap();
    assert_eq!(f.read("empty/web/img/logo.png"), "acme logo");
}

#[test]
fn a_failed_render_leaves_nothing_behind() {
    let f = Fixture::new();
    let v = f.load(THREE_TENANTS).unwrap();
    // The base changes after the check: a file it listed is gone.
    fs::remove_file(f.path("dist/web/notes.txt")).unwrap();
    fs::create_dir(f.path("renders")).unwrap();
    let out = f.path("renders/acme");
    let err = v.render(&name("acme"), &out, LinkMode::HardLink).unwrap_err();
    assert!(matches!(err, VariantsError::Render { .. }), "{err}");
    assert!(err.to_string().contains("notes.txt"), "{err}");
    assert!(!out.exists());
    assert_eq!(listing(&f.path("renders")), Vec::<String>::new(), "no temporary directory left");
    assert_eq!(fs::read_dir(f.path("renders")).unwrap().count(), 0);
}

// One test per kind of mistake: each names the line and what is wrong.

#[test]
fn a_syntax_error_is_located() {
    let f = Fixture::new();
    let problems = f.problems(&format!("{BASE}\n[variants.acme]\ntenants = [\"acme\"\n"));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!((problems[0].line, problems[0].column), (10, 18), "{problems:?}");
    assert_eq!(problems[0].message, "unclosed array, expected `]`");
    assert_eq!(problems[0].file, f.path("ferry.variants.toml"));
}

#[test]
fn an_unknown_key_is_located_anywhere() {
    let f = Fixture::new();
    let text = format!(
        "{BASE}\n[variants.acme]\ntenants = [\"acme\"]\n[variants.acme.web]\nreplce = {{ \"img/logo.png\" = \"x\" }}\n"
    );
    let problems = f.problems(&text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!((problems[0].line, problems[0].column), (12, 1));
    assert!(problems[0].message.contains("unknown field `replce`"), "{}", problems[0]);

    let problems = f.problems("[base.artifacts.web]\npath = \"dist/web\"\npatth = \"x\"\n");
    assert_eq!(problems[0].line, 3);
    assert!(problems[0].message.contains("unknown field `patth`"), "{}", problems[0]);

    let problems = f.problems(&format!("apps = \"crm\"\n{BASE}"));
    assert_eq!(problems[0].line, 1);
    assert!(problems[0].message.contains("unknown field `apps`"), "{}", problems[0]);

    // A key of a variant that is not a table of overrides.
    let problems = f.problems(&format!("{BASE}[variants.acme]\ntenant = [\"acme\"]\n"));
    assert_eq!(problems[0].line, 9, "{problems:?}");
    assert!(problems[0].message.contains("the only other key of a variant is `tenants`"), "{}", problems[0]);
}

#[test]
fn a_missing_base_path_is_located() {
    let f = Fixture::new();
    let text = BASE.replace("dist/app.apk", "dist/missing.apk") + "[variants.acme]\ntenants = [\"acme\"]\n";
    let problems = f.problems(&text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!((problems[0].line, problems[0].column), (4, 8));
    assert!(problems[0].message.starts_with("base artifact \"mobile\": `path`: \"dist/missing.apk\" does not exist"));
}

#[test]
fn a_missing_override_source_is_located() {
    let f = Fixture::new();
    let text = format!(
        "{BASE}[variants.acme]\ntenants = [\"acme\"]\n[variants.acme.web]\n\
         replace = {{ \"img/logo.png\" = \"variants/acme/nope.png\" }}\n\
         [variants.acme.mobile]\nsource = \"variants/acme/nope.apk\"\n"
    );
    let problems = f.problems(&text);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(problems[0].line, 11);
    assert!(problems[0].message.contains("file \"variants/acme/nope.png\" does not exist"), "{}", problems[0]);
    assert_eq!(problems[1].line, 13);
    assert!(problems[1].message.contains("\"variants/acme/nope.apk\" does not exist"), "{}", problems[1]);
}

#[test]
fn edits_of_paths_the_base_does_not_have_or_already_has_are_located() {
    let f = Fixture::new();
    let text = format!(
        "{BASE}[variants.acme]\ntenants = [\"acme\"]\n[variants.acme.web]\n\
         replace = {{ \"img/logo.jpg\" = \"variants/acme/logo.png\" }}\n\
         remove = [\"img/none.png\"]\n\
         add = {{ \"img/promo.png\" = \"variants/acme/extra.png\" }}\n"
    );
    let problems = f.problems(&text);
    let found: Vec<(usize, &str)> = problems.iter().map(|p| (p.line, p.message.as_str())).collect();
    assert_eq!(
        found,
        [
            (11, "variant \"acme\": artifact \"web\": `replace`: \"img/logo.jpg\" is not in the base artifact"),
            (12, "variant \"acme\": artifact \"web\": `remove`: \"img/none.png\" is not in the base artifact"),
            (
                13,
                "variant \"acme\": artifact \"web\": `add`: \"img/promo.png\" already exists in the base artifact; \
                 use `replace`"
            ),
        ]
    );
}

#[test]
fn edits_of_a_file_artifact_point_to_source() {
    let f = Fixture::new();
    let text = format!(
        "{BASE}[variants.acme]\ntenants = [\"acme\"]\n[variants.acme.mobile]\n\
         replace = {{ \"app.apk\" = \"variants/north/app.apk\" }}\n\
         [variants.acme.api.set.\"openapi.json\"]\n\"/info/title\" = \"x\"\n"
    );
    let problems = f.problems(&text);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(problems[0].line, 11);
    assert!(problems[0].message.contains("is a file: `replace`"), "{}", problems[0]);
    assert!(problems[0].message.contains("use `source`"), "{}", problems[0]);
    assert_eq!(problems[1].line, 12);
    assert!(problems[1].message.contains("with the key \"\""), "{}", problems[1]);
}

#[test]
fn an_override_of_an_artifact_not_in_the_base_is_located() {
    let f = Fixture::new();
    let text = format!("{BASE}[variants.acme]\ntenants = [\"acme\"]\n[variants.acme.webb]\nremove = [\"x\"]\n");
    let problems = f.problems(&text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!((problems[0].line, problems[0].column), (10, 16));
    assert_eq!(
        problems[0].message,
        "variant \"acme\": artifact \"webb\" is not a base artifact (the base has: api, mobile, web)"
    );
}

#[test]
fn set_problems_are_located_at_the_pointer_or_the_file() {
    let f = Fixture::new();
    let text = format!(
        "{BASE}[variants.acme]\ntenants = [\"acme\"]\n\
         [variants.acme.web.set.\"config.json\"]\n\
         \"/api/endpoint\" = \"ok\"\n\
         \"/api/endpoit\" = \"x\"\n\
         \"/theme/colors/2\" = \"#fff\"\n\
         [variants.acme.web.set.\"missing.json\"]\n\"/a\" = 1\n\
         [variants.acme.web.set.\"notes.txt\"]\n\"/a\" = 1\n\
         [variants.acme.web.set.\"broken.json\"]\n\"/a\" = 1\n\
         [variants.acme.web.set.\"settings.yaml\"]\n\"/features/chat/x\" = 1\n"
    );
    let problems = f.problems(&text);
    let found: Vec<(usize, &str)> = problems.iter().map(|p| (p.line, p.message.as_str())).collect();
    let ctx = "variant \"acme\": artifact \"web\": `set` on";
    assert_eq!(found.len(), 6, "{problems:#?}");
    assert_eq!(
        found[0],
        (
            12,
            &*format!(
                "{ctx} \"config.json\": pointer \"/api/endpoit\" matches nothing: no key \"endpoit\" in the object at \"/api\""
            )
        )
    );
    assert_eq!(
        found[1],
        (
            13,
            &*format!(
                "{ctx} \"config.json\": pointer \"/theme/colors/2\" matches nothing: index 2 is out of range, \
                 the array at \"/theme/colors\" has 2 items"
            )
        )
    );
    assert_eq!(found[2], (14, &*format!("{ctx} \"missing.json\": the file is not in the artifact")));
    assert_eq!(found[3], (16, &*format!("{ctx} \"notes.txt\": not a JSON (.json) or YAML (.yaml, .yml) file")));
    assert_eq!(found[4].0, 18);
    assert!(
        found[4].1.starts_with(&format!("{ctx} \"broken.json\": the file does not parse as JSON: ")),
        "{}",
        found[4].1
    );
    assert_eq!(found[5].0, 21);
    assert!(found[5].1.contains("the value at \"/features/chat\" is a boolean"), "{}", found[5].1);
}

#[test]
fn set_applies_to_replaced_content() {
    let f = Fixture::new();
    f.file("variants/acme/config.json", r#"{"api": {"endpoint": "replaced"}, "extra": 1}"#);
    let text = format!(
        "{BASE}[variants.acme]\ntenants = [\"acme\"]\n[variants.acme.web]\n\
         replace = {{ \"config.json\" = \"variants/acme/config.json\" }}\n\
         [variants.acme.web.set.\"config.json\"]\n\"/extra\" = [1, 2.5, \"three\"]\n"
    );
    let v = f.load(&text).unwrap();
    v.render(&name("acme"), &f.path("out"), LinkMode::Copy).unwrap();
    assert_eq!(f.read("out/web/config.json"), r#"{"api":{"endpoint":"replaced"},"extra":[1,2.5,"three"]}"#);
}

#[test]
fn a_tenant_in_two_variants_is_located_at_the_second() {
    let f = Fixture::new();
    let text =
        format!("{BASE}[variants.acme]\ntenants = [\"acme\"]\n[variants.north]\ntenants = [\"globex\", \"acme\"]\n");
    let problems = f.problems(&text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!((problems[0].line, problems[0].column), (11, 22));
    assert_eq!(problems[0].message, "variant \"north\": tenant \"acme\" is also in variant \"acme\" (line 9)");
}

#[test]
fn invalid_names_and_paths_are_located() {
    let f = Fixture::new();
    let text = format!(
        "app = \"CRM\"\n{BASE}platforms = [\"Android\"]\n[variants.Acme]\ntenants = [\"ac me\"]\n\
         [variants.Acme.web]\nremove = [\"../etc/passwd\"]\n"
    );
    let problems = f.problems(&text);
    let found: Vec<(usize, String)> = problems.iter().map(|p| (p.line, p.message.clone())).collect();
    assert_eq!(found.len(), 5, "{found:#?}");
    assert_eq!(found[0].0, 1);
    assert!(found[0].1.starts_with("invalid app name \"CRM\""), "{}", found[0].1);
    assert_eq!(found[1].0, 9);
    assert!(found[1].1.starts_with("base artifact \"api\": invalid platform name \"Android\""), "{}", found[1].1);
    assert_eq!(found[2].0, 10);
    assert!(found[2].1.starts_with("invalid variant name \"Acme\""), "{}", found[2].1);
    assert_eq!(found[3].0, 11);
    assert!(found[3].1.starts_with("variant \"Acme\": invalid tenant name \"ac me\""), "{}", found[3].1);
    assert_eq!(found[4].0, 13);
    assert!(found[4].1.contains("`remove`: invalid path \"../etc/passwd\""), "{}", found[4].1);
}

#[test]
fn empty_tenants_no_variants_and_no_base_artifacts_are_located() {
    let f = Fixture::new();
    let problems =
        f.problems(&format!("{BASE}[variants.acme]\ntenants = []\n[variants.north.web]\nremove = [\"notes.txt\"]\n"));
    let found: Vec<(usize, &str)> = problems.iter().map(|p| (p.line, p.message.as_str())).collect();
    assert_eq!(
        found,
        [
            (9, "variant \"acme\": `tenants` is empty: name at least one tenant"),
            (10, "variant \"north\": no `tenants`: name the tenants it is for, e.g. tenants = [\"acme\"]"),
        ]
    );

    let problems = f.problems(&format!("app = \"crm\"\n{BASE}"));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].line, 1);
    assert!(problems[0].message.starts_with("no variants"), "{}", problems[0]);

    let problems = f.problems("app = \"crm\"\n\n[base]\n\n[variants.acme]\ntenants = [\"acme\"]\n");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].line, 3);
    assert!(problems[0].message.starts_with("no base artifacts"), "{}", problems[0]);
}

#[test]
fn source_combined_with_other_overrides_is_located() {
    let f = Fixture::new();
    let text = format!(
        "{BASE}[variants.acme]\ntenants = [\"acme\"]\n[variants.acme.web]\n\
         source = \"dist/web\"\nremove = [\"notes.txt\"]\n"
    );
    let problems = f.problems(&text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].line, 11);
    assert_eq!(
        problems[0].message,
        "variant \"acme\": artifact \"web\": `source` substitutes the whole artifact and cannot be combined with \
         `remove` (line 12)"
    );
}

#[test]
fn check_reports_every_problem_at_once_in_file_order() {
    let f = Fixture::new();
    let text = format!(
        "{BASE}\
         [variants.acme]\n\
         tenants = [\"acme\"]\n\
         [variants.acme.web]\n\
         remove = [\"img/none.png\"]\n\
         [variants.acme.web.set.\"config.json\"]\n\
         \"/nope\" = 1\n\
         [variants.north]\n\
         tenants = [\"acme\", \"Globex\"]\n\
         [variants.north.webb]\n\
         remove = [\"x\"]\n"
    )
    .replace("openapi.json", "openapi.yaml");
    let err = f.load(&text).unwrap_err();
    let lines: Vec<usize> = err.problems().iter().map(|p| p.line).collect();
    assert_eq!(lines, [7, 11, 13, 15, 15, 16], "{err}");
    let display = err.to_string();
    let file = f.path("ferry.variants.toml");
    assert_eq!(display.lines().count(), 6, "{display}");
    for (line, problem) in display.lines().zip(err.problems()) {
        assert!(line.starts_with(&format!("{}:{}:{}: ", file.display(), problem.line, problem.column)), "{line}");
    }
}

#[test]
fn an_unreadable_or_non_utf8_file_is_refused() {
    let f = Fixture::new();
    let err = Variants::load(&f.path("nope.toml")).unwrap_err();
    assert!(matches!(err, VariantsError::Read { .. }), "{err}");
    fs::write(f.path("bad.toml"), b"app = \"crm\"\n# caf\xe9\n").unwrap();
    let err = Variants::load(&f.path("bad.toml")).unwrap_err();
    assert_eq!(err.problems().iter().map(|p| (p.line, p.column)).collect::<Vec<_>>(), [(2, 6)], "{err}");
}
