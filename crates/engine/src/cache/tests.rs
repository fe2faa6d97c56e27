use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::*;

fn material(lr: f64) -> KeyMaterial {
    let mut m = KeyMaterial::new("train", 1, json!({ "lr": lr }));
    m.env.insert("device".into(), "cpu".into());
    m
}

fn meta() -> RecordMeta {
    RecordMeta {
        node: "train".into(),
        pipeline: "p.yaml".into(),
        created_unix_ms: now_unix_ms(),
        duration_ms: 5,
        host: "h".into(),
        device: "cpu".into(),
        run_id: None,
        inputs_verified: true,
    }
}

/// Stages and commits `files` (relative path -> contents) under `material`.
fn commit_files(cache: &Cache, m: &KeyMaterial, files: &[(&str, &[u8])]) -> Record {
    commit_as(cache, m, files, true)
}

/// [`commit_files`] with the record's `inputs_verified` flag set as given (`false`: a
/// record written before stages checked their inputs).
fn commit_as(cache: &Cache, m: &KeyMaterial, files: &[(&str, &[u8])], verified: bool) -> Record {
    let staging = cache.stage(&m.key()).unwrap();
    for (rel, bytes) in files {
        let p = staging.out_dir().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let meta = RecordMeta {
        inputs_verified: verified,
        ..meta()
    };
    cache.commit(staging, m, meta).unwrap()
}

/// Key material of a stage reading `deps`' outputs (as plan.rs builds it).
fn downstream(lr: f64, deps: &[(&str, &Record)]) -> KeyMaterial {
    let mut m = material(lr);
    for (name, rec) in deps {
        m.upstream.insert((*name).into(), rec.tree_digest.clone());
    }
    m
}

/// Flips one bit of a file in place and restores its size, mtime (to the nanosecond) and
/// mode: damage no stat signature can see, as in issue 19's hostile trial.
fn rot_keeping_stat(path: &Path) {
    let before = std::fs::metadata(path).unwrap();
    let mtime = before.modified().unwrap();
    std::fs::set_permissions(path, Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    bytes[0] ^= 0x01;
    let mut f = std::fs::File::options().write(true).open(path).unwrap();
    std::io::Write::write_all(&mut f, &bytes).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    std::fs::set_permissions(path, before.permissions()).unwrap();
    let after = std::fs::metadata(path).unwrap();
    let sig = |m: &std::fs::Metadata| (m.len(), m.modified().unwrap(), m.ino());
    assert_eq!(
        sig(&after),
        sig(&before),
        "the damage must keep size, mtime, inode"
    );
}

fn quarantined(cache: &Cache) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache.root().join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Makes a committed object writable and overwrites it with same-size garbage.
fn corrupt_object(cache: &Cache, digest: &str) {
    let obj = cache.object_path(digest);
    let len = std::fs::metadata(&obj).unwrap().len() as usize;
    std::fs::set_permissions(&obj, Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&obj, vec![b'X'; len]).unwrap();
}

fn dir_is_empty(p: &Path) -> bool {
    std::fs::read_dir(p).unwrap().next().is_none()
}

#[test]
fn commit_then_lookup_round_trips_nested_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(&dir.path().join("cache")).unwrap();
    let m = material(0.1);
    assert!(cache.lookup(&m.key()).unwrap().is_none());
    let files: &[(&str, &[u8])] = &[
        ("metrics.json", b"{\"fid\": 1.5}"),
        ("ckpt/g.safetensors", b"weights"),
        ("samples/a/b/0.png", b"png-bytes"),
        ("samples/a/b/1.png", b"png-bytes"), // same content: one object
    ];
    let rec = commit_files(&cache, &m, files);
    assert_eq!(rec.files.len(), 4);
    let got = cache.lookup(&m.key()).unwrap().expect("committed record");
    assert_eq!(got, rec);
    let out = cache.output_dir(&got).unwrap();
    for (rel, bytes) in files {
        assert_eq!(&std::fs::read(out.join(rel)).unwrap(), bytes, "{rel}");
    }
    // The view's digest is the record's tree digest, which downstream keys use.
    assert_eq!(cache.digest_path(&out).unwrap(), rec.tree_digest);
    // Objects are read-only and deduplicated; staging is gone.
    assert_eq!(cache.objects().unwrap().len(), 3);
    let obj = cache.object_path(&rec.files[0].digest);
    assert_eq!(
        std::fs::metadata(&obj).unwrap().permissions().mode() & 0o222,
        0
    );
    assert!(dir_is_empty(&cache.root().join("tmp")));
    // The record survives reopening.
    let cache = Cache::open(&dir.path().join("cache")).unwrap();
    assert_eq!(cache.lookup(&m.key()).unwrap(), Some(rec));
}

#[test]
fn commit_refuses_a_key_that_is_not_the_materials() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let staging = cache.stage(&material(0.1).key()).unwrap();
    let err = cache.commit(staging, &material(0.2), meta()).unwrap_err();
    assert!(matches!(err, CacheError::KeyMismatch { .. }), "{err}");
    assert!(cache.lookup(&material(0.2).key()).unwrap().is_none());
}

#[test]
fn symlinks_inside_are_stored_and_outside_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(&dir.path().join("cache")).unwrap();
    let m = material(0.3);
    let staging = cache.stage(&m.key()).unwrap();
    std::fs::write(staging.out_dir().join("real.txt"), b"data").unwrap();
    std::os::unix::fs::symlink("real.txt", staging.out_dir().join("alias.txt")).unwrap();
    let rec = cache.commit(staging, &m, meta()).unwrap();
    let out = cache.output_dir(&rec).unwrap();
    assert_eq!(std::fs::read(out.join("alias.txt")).unwrap(), b"data");
    assert!(
        !std::fs::symlink_metadata(out.join("alias.txt"))
            .unwrap()
            .is_symlink()
    );

    let outside = dir.path().join("secret.txt");
    std::fs::write(&outside, b"x").unwrap();
    let m = material(0.4);
    let staging = cache.stage(&m.key()).unwrap();
    std::os::unix::fs::symlink(&outside, staging.out_dir().join("leak.txt")).unwrap();
    let err = cache.commit(staging, &m, meta()).unwrap_err().to_string();
    assert!(err.contains("leak.txt") && err.contains("outside"), "{err}");
    assert!(cache.lookup(&m.key()).unwrap().is_none());
}

#[test]
fn staging_without_commit_leaves_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let m = material(0.1);
    let staging = cache.stage(&m.key()).unwrap();
    std::fs::write(staging.out_dir().join("half.bin"), b"partial").unwrap();
    // Simulate a crash: the process dies without commit and without running destructors.
    std::mem::forget(staging);
    assert!(cache.lookup(&m.key()).unwrap().is_none());
    assert!(cache.records().unwrap().is_empty());
    // The staging dir's owner lock is still held by this process (forgotten, not closed),
    // so gc leaves it; a dead owner would release it.
    assert!(cache.gc(None).unwrap().removed_tmp.is_empty());
}

#[test]
fn corrupted_object_makes_lookup_miss_and_drops_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let m = material(0.1);
    let rec = commit_files(&cache, &m, &[("a.bin", b"good data"), ("b.bin", b"other")]);
    let a = rec.files.iter().find(|f| f.path == "a.bin").unwrap();
    corrupt_object(&cache, &a.digest);
    assert!(cache.lookup(&m.key()).unwrap().is_none());
    assert!(!cache.record_path(&m.key()).exists(), "record kept");
    assert!(!cache.view_path(&m.key()).exists(), "view kept");
    assert!(
        !cache.object_path(&a.digest).exists(),
        "corrupt object not quarantined"
    );
    // Re-running the stage recreates a good object and record.
    let again = commit_files(&cache, &m, &[("a.bin", b"good data"), ("b.bin", b"other")]);
    let got = cache.lookup(&m.key()).unwrap().unwrap();
    assert_eq!(got.tree_digest, again.tree_digest);
    assert_eq!(
        std::fs::read(cache.output_dir(&got).unwrap().join("a.bin")).unwrap(),
        b"good data"
    );
}

#[test]
fn missing_object_makes_lookup_miss() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let m = material(0.1);
    let rec = commit_files(&cache, &m, &[("a.bin", b"abc")]);
    std::fs::remove_file(cache.object_path(&rec.files[0].digest)).unwrap();
    assert!(cache.lookup(&m.key()).unwrap().is_none());
    assert!(cache.records().unwrap().is_empty());
}

#[test]
fn garbled_record_is_dropped_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let m = material(0.1);
    commit_files(&cache, &m, &[("a.bin", b"abc")]);
    std::fs::write(cache.record_path(&m.key()), b"{\"key\": tru").unwrap();
    assert!(cache.lookup(&m.key()).unwrap().is_none());
    // A record claiming a key its material does not produce is refused too.
    let other = commit_files(&cache, &material(0.2), &[("a.bin", b"abc")]);
    let mut forged = other.clone();
    forged.key = m.key();
    std::fs::write(
        cache.record_path(&m.key()),
        serde_json::to_vec(&forged).unwrap(),
    )
    .unwrap();
    assert!(cache.lookup(&m.key()).unwrap().is_none());
}

#[test]
fn damaged_view_is_rematerialised() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let m = material(0.1);
    let rec = commit_files(&cache, &m, &[("x/a.txt", b"aaa"), ("b.txt", b"bbb")]);
    let view = cache.output_dir(&rec).unwrap();
    std::fs::remove_file(view.join("x/a.txt")).unwrap();
    std::fs::write(view.join("stray.txt"), b"junk").unwrap();
    let view = cache.output_dir(&rec).unwrap();
    assert_eq!(std::fs::read(view.join("x/a.txt")).unwrap(), b"aaa");
    assert!(!view.join("stray.txt").exists());
    std::fs::remove_dir_all(&view).unwrap();
    assert_eq!(
        std::fs::read(cache.output_dir(&rec).unwrap().join("b.txt")).unwrap(),
        b"bbb"
    );
}

#[test]
fn verify_quarantines_corrupt_objects_and_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let good = commit_files(&cache, &material(0.1), &[("a", b"fine")]);
    let bad = commit_files(
        &cache,
        &material(0.2),
        &[("a", b"will rot"), ("b", b"fine")],
    );
    let rotten = bad
        .files
        .iter()
        .find(|f| f.path == "a")
        .unwrap()
        .digest
        .clone();
    corrupt_object(&cache, &rotten);
    let before = cache.hash_count();
    let report = cache.verify().unwrap();
    assert_eq!(report.objects_checked, 2); // "fine" is shared by both records
    assert_eq!(
        cache.hash_count() - before,
        2,
        "verify must re-hash every object"
    );
    assert_eq!(report.corrupt, vec![rotten.clone()]);
    assert_eq!(report.removed_records, vec![bad.key.clone()]);
    assert!(report.missing.is_empty());
    assert!(cache.lookup(&bad.key).unwrap().is_none());
    assert!(cache.lookup(&good.key).unwrap().is_some());
    let quarantined: Vec<_> = std::fs::read_dir(cache.root().join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(quarantined.len(), 1);
    assert!(quarantined[0].starts_with(&rotten));
    // A clean cache verifies clean.
    let again = cache.verify().unwrap();
    assert!(again.corrupt.is_empty() && again.removed_records.is_empty());
}

#[test]
fn verify_reports_missing_objects() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let rec = commit_files(&cache, &material(0.1), &[("a", b"gone soon")]);
    std::fs::remove_file(cache.object_path(&rec.files[0].digest)).unwrap();
    let report = cache.verify().unwrap();
    assert_eq!(report.missing, vec![rec.files[0].digest.clone()]);
    assert_eq!(report.removed_records, vec![rec.key]);
}

fn age(path: &Path) {
    let old = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(old)
        .unwrap();
}

#[test]
fn stat_cache_avoids_rehashing_unchanged_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dataset");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    for (i, name) in ["a.png", "b.png", "sub/c.png"].iter().enumerate() {
        std::fs::write(data.join(name), vec![i as u8; 1000]).unwrap();
        age(&data.join(name));
    }
    let cache = Cache::open(&dir.path().join("cache")).unwrap();
    let d1 = cache.digest_path(&data).unwrap();
    assert_eq!(cache.hash_count(), 3);
    let d2 = cache.digest_path(&data).unwrap();
    assert_eq!(d1, d2);
    assert_eq!(cache.hash_count(), 3, "unchanged files were re-hashed");
    // The stat cache is persistent: a new Cache (new process) does not re-hash either.
    let cache2 = Cache::open(&dir.path().join("cache")).unwrap();
    assert_eq!(cache2.digest_path(&data).unwrap(), d1);
    assert_eq!(cache2.hash_count(), 0);
    // Changing one file re-hashes only that file and changes the digest.
    std::fs::write(data.join("sub/c.png"), vec![9u8; 1000]).unwrap();
    let d3 = cache2.digest_path(&data).unwrap();
    assert_ne!(d3, d1);
    assert_eq!(cache2.hash_count(), 1);
    // Just-modified files are not trusted to the stat cache (racy window)...
    assert_eq!(cache2.digest_path(&data).unwrap(), d3);
    assert_eq!(cache2.hash_count(), 2);
    // ...until they are old enough.
    age(&data.join("sub/c.png"));
    cache2.digest_path(&data).unwrap();
    cache2.digest_path(&data).unwrap();
    assert_eq!(cache2.hash_count(), 3);
    // A file digest is the blake3 of its content.
    assert_eq!(
        cache2.digest_path(&data.join("a.png")).unwrap(),
        blake3::hash(&[0u8; 1000]).to_hex().to_string()
    );
}

#[test]
fn digest_of_missing_path_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let missing = dir.path().join("no-such-dataset");
    let err = cache.digest_path(&missing).unwrap_err();
    assert!(matches!(err, CacheError::Missing { .. }));
    assert!(err.to_string().contains("no-such-dataset"), "{err}");
}

#[test]
fn lookup_does_not_rehash_intact_objects() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let m = material(0.1);
    commit_files(&cache, &m, &[("a", b"1"), ("b", b"2")]);
    let before = cache.hash_count();
    for _ in 0..3 {
        assert!(cache.lookup(&m.key()).unwrap().is_some());
    }
    assert_eq!(cache.hash_count(), before);
}

#[test]
fn gc_removes_orphans_and_keeps_referenced_objects() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let keep = commit_files(
        &cache,
        &material(0.1),
        &[("shared", b"common"), ("own", b"one")],
    );
    let drop_me = commit_files(
        &cache,
        &material(0.2),
        &[("shared", b"common"), ("own", b"two")],
    );
    // Orphans: a view without record, an object no record uses, a dead process's tmp dir.
    let orphan_key = material(0.9).key();
    std::fs::create_dir_all(cache.view_path(&orphan_key)).unwrap();
    let orphan_obj = cache.object_path(&"f".repeat(64));
    std::fs::create_dir_all(orphan_obj.parent().unwrap()).unwrap();
    std::fs::write(&orphan_obj, b"orphan").unwrap();
    let dead_tmp = cache.root().join("tmp/stage-dead-1-2-3");
    std::fs::create_dir_all(dead_tmp.join("out")).unwrap();
    std::fs::write(dead_tmp.join("out/x"), b"x").unwrap();
    std::fs::write(cache.root().join("tmp/stage-dead-1-2-3.lock"), b"{}").unwrap();
    // A live staging dir must survive.
    let live = cache.stage(&material(0.5).key()).unwrap();

    let report = cache.gc(None).unwrap();
    assert_eq!(report.removed_objects, 1);
    assert_eq!(report.removed_views, vec![orphan_key.to_string()]);
    assert_eq!(report.removed_tmp, vec![dead_tmp.clone()]);
    assert!(report.removed_records.is_empty());
    assert!(!orphan_obj.exists() && !dead_tmp.exists());
    assert!(live.out_dir().exists());
    assert!(cache.lookup(&keep.key).unwrap().is_some());
    assert!(cache.lookup(&drop_me.key).unwrap().is_some());

    // With a keep set: the other record goes, and its unshared object with it.
    let report = cache.gc(Some(&BTreeSet::from([keep.key.clone()]))).unwrap();
    assert_eq!(report.removed_records, vec![drop_me.key.clone()]);
    assert_eq!(report.removed_objects, 1);
    assert!(cache.lookup(&drop_me.key).unwrap().is_none());
    let kept = cache.lookup(&keep.key).unwrap().unwrap();
    let out = cache.output_dir(&kept).unwrap();
    assert_eq!(std::fs::read(out.join("shared")).unwrap(), b"common");
    assert_eq!(std::fs::read(out.join("own")).unwrap(), b"one");
    assert_eq!(cache.objects().unwrap().len(), 2);
}

#[test]
fn gc_leaves_locked_keys_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let rec = commit_files(&cache, &material(0.1), &[("a", b"a")]);
    let scratch = cache.scratch_dir(&rec.key).unwrap();
    std::fs::write(scratch.join("ckpt"), b"step 10").unwrap();
    let lock = KeyLock::acquire(cache.root(), &rec.key).unwrap();
    let report = cache.gc(Some(&BTreeSet::new())).unwrap();
    assert_eq!(report.skipped_locked, vec![rec.key.clone()]);
    assert!(report.removed_records.is_empty() && report.removed_objects == 0);
    assert!(scratch.join("ckpt").exists());
    drop(lock);
    let report = cache.gc(Some(&BTreeSet::new())).unwrap();
    assert_eq!(report.removed_records, vec![rec.key.clone()]);
    assert_eq!(report.removed_scratch, vec![rec.key.to_string()]);
    assert!(cache.records().unwrap().is_empty());
}

#[test]
fn scratch_survives_until_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let k = material(0.1).key();
    let s = cache.scratch_dir(&k).unwrap();
    std::fs::write(s.join("ckpt.bin"), b"1").unwrap();
    // gc without keep keeps scratch of uncommitted keys: it is how a crashed stage resumes.
    cache.gc(None).unwrap();
    assert!(cache.scratch_dir(&k).unwrap().join("ckpt.bin").exists());
    cache.clear_scratch(&k).unwrap();
    assert!(!s.join("ckpt.bin").exists());
    cache.clear_scratch(&k).unwrap();
}

#[test]
fn leftover_scratch_is_cleared_only_when_its_key_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let k = material(0.1).key();
    assert!(
        !cache.clear_leftover_scratch(&k).unwrap(),
        "nothing to clear"
    );
    let s = cache.scratch_dir(&k).unwrap();
    std::fs::write(s.join("ckpt.bin"), b"1").unwrap();
    // A holder of the key (a `--force` re-run using its scratch) keeps it.
    let held = KeyLock::acquire(dir.path(), &k).unwrap();
    assert!(!cache.clear_leftover_scratch(&k).unwrap());
    assert!(s.join("ckpt.bin").exists());
    drop(held);
    assert!(cache.clear_leftover_scratch(&k).unwrap());
    assert!(!s.exists());
}

/// Helper process for `killed_stage_leaves_nothing_served`: stages outputs for a key, says
/// where, then waits to be killed before committing.
#[test]
#[ignore = "helper process started by killed_stage_leaves_nothing_served"]
fn helper_stage_then_hang() {
    use std::io::Read;
    let root = PathBuf::from(std::env::var("UGC_CACHE_TEST_ROOT").unwrap());
    let marker = PathBuf::from(std::env::var("UGC_CACHE_TEST_MARKER").unwrap());
    let cache = Cache::open(&root).unwrap();
    let staging = cache.stage(&material(0.7).key()).unwrap();
    std::fs::write(staging.out_dir().join("partial.bin"), b"half written").unwrap();
    std::fs::write(&marker, staging.work_dir().to_str().unwrap()).unwrap();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

#[test]
fn killed_stage_leaves_nothing_served() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let marker = dir.path().join("marker");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "cache::tests::helper_stage_then_hang",
            "--ignored",
            "--test-threads=1",
        ])
        .env("UGC_CACHE_TEST_ROOT", &root)
        .env("UGC_CACHE_TEST_MARKER", &marker)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !marker.exists() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let work = PathBuf::from(std::fs::read_to_string(&marker).unwrap());
    let cache = Cache::open(&root).unwrap();
    // While the owner lives, its staging dir is not garbage.
    assert!(cache.gc(None).unwrap().removed_tmp.is_empty());
    assert!(work.exists());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(cache.lookup(&material(0.7).key()).unwrap().is_none());
    assert!(cache.records().unwrap().is_empty());
    let report = cache.gc(None).unwrap();
    assert_eq!(report.removed_tmp, vec![work.clone()]);
    assert!(!work.exists());
    assert!(
        dir_is_empty(&cache.root().join("tmp")),
        "owner lock file left behind"
    );
}

#[test]
fn cache_and_registry_can_be_shared_between_threads() {
    fn assert_sync<T: Send + Sync>() {}
    assert_sync::<Cache>();
    assert_sync::<crate::registry::Registry>();
}

#[test]
fn empty_output_commits_to_an_empty_view() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let m = material(0.1);
    let rec = commit_files(&cache, &m, &[]);
    assert!(rec.files.is_empty());
    let got = cache.lookup(&m.key()).unwrap().unwrap();
    let view = cache.output_dir(&got).unwrap();
    assert!(view.is_dir() && dir_is_empty(&view));
    assert_eq!(cache.digest_path(&view).unwrap(), rec.tree_digest);
}

#[test]
fn check_input_finds_damage_that_keeps_size_and_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let rec = commit_files(
        &cache,
        &material(0.1),
        &[("ckpt/g.bin", b"supernet weights"), ("log.txt", b"ok")],
    );
    let view = cache.output_dir(&rec).unwrap();
    assert_eq!(cache.check_input(&view).unwrap(), rec);
    let g = rec.files.iter().find(|f| f.path == "ckpt/g.bin").unwrap();
    rot_keeping_stat(&cache.object_path(&g.digest));
    // The stat check of a lookup cannot see this damage...
    assert!(cache.lookup(&rec.key).unwrap().is_some());
    // ...the consumer's full re-hash does, and names the key and the file.
    let err = cache.check_input(&view).unwrap_err();
    assert!(
        matches!(&err, CacheError::DamagedInput { key, file, derived: 0, .. }
            if *key == rec.key && file == "ckpt/g.bin"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(rec.key.as_str()) && text.contains("re-run"),
        "{text}"
    );
    assert!(cache.lookup(&rec.key).unwrap().is_none(), "record kept");
    assert!(!cache.object_path(&g.digest).exists());
    assert_eq!(quarantined(&cache).len(), 1);
    assert!(quarantined(&cache)[0].starts_with(&g.digest));
    // The record is gone, so a second consumer is told so rather than served.
    let err = cache.check_input(&view).unwrap_err();
    assert!(matches!(err, CacheError::InputGone { .. }), "{err:?}");
}

#[test]
fn check_input_hashes_every_byte_each_time() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let big = vec![7u8; 3 << 20];
    let rec = commit_files(&cache, &material(0.1), &[("a", &big), ("b", b"small")]);
    let view = cache.output_dir(&rec).unwrap();
    for round in 1..=2u64 {
        let before = cache.hashed_bytes();
        cache.check_input(&view).unwrap();
        assert_eq!(
            cache.hashed_bytes() - before,
            rec.size(),
            "round {round}: the stat cache must not answer for inputs"
        );
    }
}

#[test]
fn check_input_refuses_a_folder_that_is_not_a_view_of_this_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(&dir.path().join("cache")).unwrap();
    let rec = commit_files(&cache, &material(0.1), &[("a", b"x")]);
    let elsewhere = dir.path().join("views").join(rec.key.as_str());
    std::fs::create_dir_all(&elsewhere).unwrap();
    for path in [elsewhere, dir.path().join("cache/views/not-a-key")] {
        let err = cache.check_input(&path).unwrap_err();
        assert!(matches!(err, CacheError::NotAView { .. }), "{err:?}");
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }
}

#[test]
fn check_input_rebuilds_a_damaged_copied_view_from_its_intact_object() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let rec = commit_files(&cache, &material(0.1), &[("a.bin", b"intact bytes")]);
    let view = cache.output_dir(&rec).unwrap();
    // What a view on another file system holds: a copy with the object's size and mtime,
    // which `view_intact` accepts; then the copy rots.
    let obj = cache.object_path(&rec.files[0].digest);
    let file = view.join("a.bin");
    std::fs::remove_file(&file).unwrap();
    std::fs::copy(&obj, &file).unwrap();
    let f = std::fs::File::options().write(true).open(&file).unwrap();
    f.set_modified(std::fs::metadata(&obj).unwrap().modified().unwrap())
        .unwrap();
    drop(f);
    rot_keeping_stat(&file);
    assert_eq!(cache.check_input(&view).unwrap(), rec);
    assert_eq!(std::fs::read(&file).unwrap(), b"intact bytes");
    assert!(quarantined(&cache).is_empty(), "the object was intact");
}

#[test]
fn commit_reuses_an_existing_object_only_if_its_content_is_the_named_one() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let a = commit_files(&cache, &material(0.1), &[("w", b"same bytes")]);
    let obj = cache.object_path(&a.files[0].digest);
    rot_keeping_stat(&obj);
    // Another stage commits the same content: the damaged object, same size and all, must
    // not absorb it; the fresh bytes replace it.
    let b = commit_files(&cache, &material(0.2), &[("w", b"same bytes")]);
    assert_eq!(b.files[0].digest, a.files[0].digest);
    assert_eq!(std::fs::read(&obj).unwrap(), b"same bytes");
    assert_eq!(quarantined(&cache).len(), 1);
    for rec in [&a, &b] {
        let got = cache
            .lookup(&rec.key)
            .unwrap()
            .expect("repaired, still served");
        let view = cache.output_dir(&got).unwrap();
        assert_eq!(std::fs::read(view.join("w")).unwrap(), b"same bytes");
        cache.check_input(&view).unwrap();
    }
    // An intact object is reused as it is (no second copy, no quarantine).
    let ino = std::fs::metadata(&obj).unwrap().ino();
    commit_files(&cache, &material(0.3), &[("w", b"same bytes")]);
    assert_eq!(std::fs::metadata(&obj).unwrap().ino(), ino);
    assert_eq!(quarantined(&cache).len(), 1);
}

/// S -> A (legacy: did not check its inputs) -> B (checked) ; S -> C (checked).
fn legacy_chain(cache: &Cache) -> [Record; 4] {
    let s = commit_files(cache, &material(0.1), &[("w", b"supernet")]);
    let a = commit_as(
        cache,
        &downstream(0.2, &[("s", &s)]),
        &[("r", b"search")],
        false,
    );
    let b = commit_files(cache, &downstream(0.3, &[("a", &a)]), &[("r", b"distill")]);
    let c = commit_files(cache, &downstream(0.4, &[("s", &s)]), &[("r", b"eval")]);
    [s, a, b, c]
}

#[test]
fn verify_drops_records_derived_from_damage_unless_their_stage_checked_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let [s, a, b, c] = legacy_chain(&cache);
    rot_keeping_stat(&cache.object_path(&s.files[0].digest));
    let report = cache.verify().unwrap();
    assert_eq!(report.corrupt, vec![s.files[0].digest.clone()]);
    assert_eq!(report.removed_records, vec![s.key.clone()]);
    // A may have read the damage; B was computed from A's output. C checked its inputs.
    let mut derived = vec![a.key.clone(), b.key.clone()];
    derived.sort();
    assert_eq!(report.derived_records, derived);
    for gone in [&s, &a, &b] {
        assert!(cache.lookup(&gone.key).unwrap().is_none());
    }
    assert!(cache.lookup(&c.key).unwrap().is_some());
    let again = cache.verify().unwrap();
    assert!(again.removed_records.is_empty() && again.derived_records.is_empty());
}

#[test]
fn derived_records_follows_suspect_content_through_damaged_records() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let [s, a, b, c] = legacy_chain(&cache);
    let all = cache.records().unwrap();
    // Only S damaged: A (unchecked) and what read A.
    let mut want = vec![a.key.clone(), b.key.clone()];
    want.sort();
    assert_eq!(derived_records(&[&s], &all), want);
    // S and A damaged: A is a damaged record itself, and also suspect, so B goes.
    assert_eq!(derived_records(&[&s, &a], &all), vec![b.key.clone()]);
    // Only A damaged: B checked its inputs, so it read A's right bytes.
    assert!(derived_records(&[&a], &all).is_empty());
    // C damaged: nothing read C.
    assert!(derived_records(&[&c], &all).is_empty());
}

/// Issue 19's bit-rot scenario at the cache level: A is committed, B is computed from
/// A's output, A's object rots keeping size and mtime. The damage is found (by the
/// consumer's check, or by `verify`), A and B go, and re-running A repairs the object
/// while B is recomputed rather than served.
#[test]
fn bit_rot_is_repaired_by_a_rerun_not_served() {
    for found_by_verify in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let files: &[(&str, &[u8])] = &[("w.bin", b"supernet weights v1")];
        let a = commit_files(&cache, &material(0.1), files);
        // B as written before stages checked their inputs, so it may have read the damage.
        let b_material = downstream(0.2, &[("a", &a)]);
        let b = commit_as(&cache, &b_material, &[("r", b"search result")], false);
        let obj = cache.object_path(&a.files[0].digest);
        rot_keeping_stat(&obj);
        assert!(
            cache.lookup(&a.key).unwrap().is_some(),
            "stat check is blind"
        );
        if found_by_verify {
            let report = cache.verify().unwrap();
            assert_eq!(report.removed_records, vec![a.key.clone()]);
            assert_eq!(report.derived_records, vec![b.key.clone()]);
        } else {
            // A consumer of A (any stage that reads it) checks it before running.
            let view = cache.view_path(&a.key);
            let err = cache.check_input(&view).unwrap_err();
            assert!(
                matches!(err, CacheError::DamagedInput { derived: 1, .. }),
                "{err:?}"
            );
        }
        assert!(cache.lookup(&a.key).unwrap().is_none(), "damaged A served");
        assert!(
            cache.lookup(&b.key).unwrap().is_none(),
            "B from damage served"
        );
        // The re-run of A commits the right bytes again: same tree, so B's key is the same
        // and only a recomputation can bring B back.
        let again = commit_files(&cache, &material(0.1), files);
        assert_eq!(again.tree_digest, a.tree_digest);
        assert_eq!(std::fs::read(&obj).unwrap(), b"supernet weights v1");
        let view = cache.output_dir(&again).unwrap();
        assert_eq!(cache.check_input(&view).unwrap(), again);
        assert!(cache.lookup(&b_material.key()).unwrap().is_none());
        assert!(cache.verify().unwrap().corrupt.is_empty());
    }
}

#[test]
fn records_without_the_inputs_verified_field_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let rec = commit_files(&cache, &material(0.1), &[("a", b"x")]);
    let path = cache.record_path(&rec.key);
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    json["meta"]
        .as_object_mut()
        .unwrap()
        .remove("inputs_verified");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let got = cache.lookup(&rec.key).unwrap().expect("older record loads");
    assert!(!got.meta.inputs_verified);
}

#[test]
fn a_compute_node_opens_no_database_in_the_shared_cache() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dataset");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.png"), vec![1u8; 1000]).unwrap();
    age(&data.join("a.png"));
    let root = dir.path().join("cache");
    let node = Cache::open_on_compute_node(&root).unwrap();
    let d1 = node.digest_path(&data).unwrap();
    assert_eq!(node.hash_count(), 1);
    // Nothing SQLite (the database, its WAL or shared-memory files) in the shared cache.
    let in_root: Vec<String> = std::fs::read_dir(node.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("sqlite"))
        .collect();
    assert!(in_root.is_empty(), "{in_root:?}");
    // The node's own stat cache persists across its processes, and gives the head's digest.
    let again = Cache::open_on_compute_node(&root).unwrap();
    assert_eq!(again.digest_path(&data).unwrap(), d1);
    assert_eq!(
        again.hash_count(),
        0,
        "the node-local stat cache was not reused"
    );
    assert_eq!(Cache::open(&root).unwrap().digest_path(&data).unwrap(), d1);
    let name = super::node_local_stat_cache_name(node.root(), &crate::exec::host_name());
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(
            std::env::temp_dir()
                .join("ugc-pipe")
                .join(format!("{name}{suffix}")),
        );
    }
}

#[test]
fn a_node_local_stat_cache_is_named_by_host_and_cache_root() {
    let a = super::node_local_stat_cache_name(Path::new("/shared/cache"), "gpu-07");
    assert!(
        a.starts_with("statcache-gpu-07-") && a.ends_with(".sqlite"),
        "{a}"
    );
    assert_ne!(
        a,
        super::node_local_stat_cache_name(Path::new("/shared/cache"), "gpu-08")
    );
    assert_ne!(
        a,
        super::node_local_stat_cache_name(Path::new("/other/cache"), "gpu-07")
    );
    // A host name is never a path.
    assert!(!super::node_local_stat_cache_name(Path::new("/c"), "../x/y").contains('/'));
}
