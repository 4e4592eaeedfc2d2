//! The pool's own JSON records as an operator might hand-edit them or a crash might tear them,
//! read through the stores' real readers: `pool.json`, `volumes/<id>.json`, `names/<name>`,
//! `intent.json`, `extend.json`, `next-id` (pool `Store`, and `Pool::open`), classic origins,
//! COWs and intent (`ClassicStore`), serve's snapshot records (`SnapStore`) and image records
//! (`image::images`). The first input byte picks the file, the rest is its content. Checked:
//! no panic; a record that reads back re-encodes to one that reads back equal; a name claim
//! after a lookup behaves as the lookup said.
#![no_main]

use std::fs;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rcx_dm::internals::classic_store::ClassicStore;
use rcx_dm::internals::pool_store::Store;
use rcx_dm::pool::Pool;
use rcx_dm::rootfs::image;
use rcx_dm::internals::serve_store::SnapStore;
use rcx_dm_fuzz::fresh;
use serde::{de::DeserializeOwned, Serialize};

const POOL_JSON: &[u8] = br#"{"name":"p","data":{"kind":"file","path":"/var/lib/rcx-dm/p/data"},"meta":{"kind":"file","path":"/var/lib/rcx-dm/p/meta"},"data_bytes":1073741824,"meta_bytes":8388608,"block_bytes":65536,"low_water_blocks":163,"zero_new_blocks":true,"error_if_no_space":true}"#;

/// Encoded again and decoded again, a record must come back the same.
fn round_trip<T: Serialize + DeserializeOwned>(v: &T) {
    let a = serde_json::to_value(v).expect("a record that was read cannot be encoded");
    let bytes = serde_json::to_vec_pretty(v).unwrap();
    let back: T = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("a record re-encoded does not read back: {e}\n{}", String::from_utf8_lossy(&bytes)));
    assert_eq!(a, serde_json::to_value(&back).unwrap(), "a record changed through encode and decode");
}

fn put(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    let root = fresh("pool_records");
    let dir = root.join("p");
    let store = Store::new(dir.clone());
    store.init().unwrap();
    match sel % 11 {
        0 => {
            put(&dir.join("pool.json"), body);
            let read = store.config();
            rcx_dm_fuzz::debug("store.config()", &read);
            if let Ok(Some(c)) = read {
                round_trip(&c);
            }
            if let Ok(pool) = Pool::open(&root, "p") {
                let _ = pool.config();
                let _ = pool.reopen();
            }
        }
        1 => {
            put(&dir.join("volumes/7.json"), body);
            let read = store.volume(7);
            rcx_dm_fuzz::debug("store.volume(7)", &read);
            if let Ok(Some(v)) = read {
                round_trip(&v);
            }
            let _ = store.volumes();
            let _ = store.volume_count();
            let _ = store.has_volume(7);
        }
        2 => {
            put(&dir.join("names/web"), body);
            let before = store.lookup_name("web");
            let claimed = store.claim_name("web", 3);
            match before {
                Ok(None) | Ok(Some(3)) => {
                    claimed.unwrap_or_else(|e| panic!("claim refused after lookup {before:?}: {e}"));
                    assert_eq!(store.lookup_name("web").unwrap(), Some(3));
                }
                Ok(Some(_)) => assert!(claimed.is_err(), "claimed a name another id holds"),
                Err(_) => {}
            }
            let _ = store.release_name("web", 3);
        }
        3 => {
            put(&dir.join("intent.json"), body);
            let read = store.intent().get();
            rcx_dm_fuzz::debug("store.intent().get()", &read);
            if let Ok(Some(i)) = read {
                round_trip(&i);
            }
        }
        4 => {
            put(&dir.join("extend.json"), body);
            let read = store.extend_intent().get();
            rcx_dm_fuzz::debug("store.extend_intent().get()", &read);
            if let Ok(Some(i)) = read {
                round_trip(&i);
            }
        }
        5 => {
            put(&dir.join("next-id"), body);
            let _ = store.next_id_hint();
        }
        6 => {
            put(&dir.join("classic/origins/o.json"), body);
            let c = ClassicStore::new(dir.join("classic"));
            let read = c.origin("o");
            rcx_dm_fuzz::debug("origin", &read);
            if let Ok(Some(o)) = read {
                round_trip(&o);
            }
            let _ = c.origins();
            let _ = c.name_taken("o");
        }
        7 => {
            put(&dir.join("classic/cows/c.json"), body);
            let c = ClassicStore::new(dir.join("classic"));
            let read = c.snapshot("c");
            rcx_dm_fuzz::debug("cow", &read);
            if let Ok(Some(w)) = read {
                round_trip(&w);
            }
            let _ = c.snapshots();
            let _ = c.snapshots_of("o");
        }
        8 => {
            put(&dir.join("classic/intent.json"), body);
            let c = ClassicStore::new(dir.join("classic"));
            let read = c.intent().get();
            rcx_dm_fuzz::debug("c.intent().get()", &read);
            if let Ok(Some(i)) = read {
                round_trip(&i);
            }
        }
        9 => {
            put(&dir.join("serve/snapshots/default%2F1%2Fx.json"), body);
            let s = SnapStore::open(&dir).unwrap();
            let read = s.get("default/1/x");
            rcx_dm_fuzz::debug("serve record", &read);
            if let Ok(Some(r)) = read {
                round_trip(&r);
            }
            let _ = s.all();
        }
        _ => {
            put(&dir.join("pool.json"), POOL_JSON);
            put(&dir.join("images/i.json"), body);
            let pool = Pool::open(&root, "p").expect("the harness's pool.json");
            let read = image::find(&pool, "i");
            rcx_dm_fuzz::debug("image", &read);
            if let Ok(Some(r)) = read {
                round_trip(&r);
            }
            let _ = image::images(&pool);
        }
    }
});
