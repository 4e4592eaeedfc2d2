//! Sizes and names as they come on the command line (and through the library's front doors):
//! every parser and validator the CLI's value parsers call, with the properties they promise.
//! The input is split at the first NUL: the first part is the argument, the second (if any) a
//! second size for functions of two.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rcx_dm::pool::{self, SizeChange, Step, VolRef, MAX_THIN_ID, RESERVED_PREFIXES};
use rcx_dm::rootfs::{fs::Fs, image, oci};
use rcx_dm::{classic, runner, units};

fn name_chars_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && !s.starts_with(['.', '-'])
}

fn decode_key(e: &str) -> Vec<u8> {
    let b = e.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&e[i + 1..i + 3], 16).expect("encode_key wrote a bad escape"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let (arg, second) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let s = String::from_utf8_lossy(arg);
    let s = s.as_ref();

    // Sizes: --size, --data-size, --meta-size, --block-size, --autoextend-max, --host-reserve.
    if let Ok(b) = units::parse_bytes(s, "size", "1G") {
        assert_eq!(units::parse_bytes(&units::format_size(b), "size", "1G").unwrap(), b, "format_size({b}) does not read back");
    }
    if let Ok(b) = units::parse_size(s) {
        assert!(b > 0 && b % units::SECTOR == 0, "parse_size({s:?}) = {b}");
        assert_eq!(units::parse_size(&units::format_size(b)).unwrap(), b);
        if pool::validate_block_size(b).is_ok() {
            let data_size = second.and_then(|t| units::parse_size(&String::from_utf8_lossy(t)).ok()).unwrap_or(1 << 30);
            let m = pool::auto_meta_size(data_size, b);
            assert!(m % 4096 == 0 && m > 0);
        }
        let _ = classic::chunk_sectors(b);
    }
    // pool extend --data-size [+]SIZE
    match s.parse::<SizeChange>() {
        Ok(SizeChange::To(b)) | Ok(SizeChange::By(b)) => assert!(b > 0 && b % units::SECTOR == 0),
        Err(_) => {}
    }
    // pool set --autoextend-step PCT|SIZE, --autoextend-threshold PCT
    if let Ok(step) = s.parse::<Step>() {
        assert_eq!(step.to_string().parse::<Step>().unwrap(), step, "step {step} does not read back");
        for cur in [0, 1, 1 << 30, u64::MAX] {
            assert!(step.bytes_for(cur) >= 1);
        }
    }
    if let Ok(t) = pool::autoextend::parse_threshold(s) {
        assert!(t <= 100);
    }
    // Volume ids and names: thin create ID --name NAME, snap NEW ORIGIN, every VOL argument.
    if let Ok(id) = pool::parse_thin_id(s) {
        assert!(id <= MAX_THIN_ID);
    }
    if let Ok(v) = s.parse::<VolRef>() {
        assert_eq!(v.to_string().parse::<VolRef>().unwrap(), v, "VolRef {v} does not read back");
    }
    if pool::validate_volume_name(s).is_ok() {
        assert!(name_chars_ok(s) && !s.chars().all(|c| c.is_ascii_digit()), "volume name {s:?} accepted");
        assert!(matches!(s.parse::<VolRef>(), Ok(VolRef::Name(_))), "a valid name {s:?} is not read as a name");
    }
    if pool::validate_user_volume_name(s).is_ok() {
        assert!(pool::validate_volume_name(s).is_ok());
        assert!(!RESERVED_PREFIXES.iter().any(|p| s.starts_with(p)), "reserved name {s:?} accepted from a user");
    }
    if pool::validate_pool_name(s).is_ok() {
        assert!(name_chars_ok(s), "pool name {s:?} accepted");
        assert!(pool::names::escape_pool(s).len() <= pool::names::MAX_ESCAPED_POOL);
    }
    if classic::validate_name(s).is_ok() {
        assert!(pool::validate_volume_name(s).is_ok() && s.len() <= 48);
    }
    if image::validate_image_name(s).is_ok() {
        assert!(pool::validate_volume_name(s).is_ok() && s.len() <= 48);
    }
    // serve: containerd keys become file names.
    if let Ok(e) = rcx_dm::internals::serve_store::encode_key(s) {
        assert!(e.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-%".contains(&b)), "key file name {e:?}");
        assert!(!e.starts_with('.'), "key file name {e:?} starts with a dot");
        assert_eq!(decode_key(&e), s.as_bytes(), "encode_key is not one to one");
    }
    // image names and digests given by users (image import --name, populate --image DIR:REF).
    if let Ok(d) = oci::Digest::parse(s) {
        assert_eq!(d.to_string(), s);
    }
    let _ = s.parse::<Fs>();
    // run --env K=V
    if let Ok(Some((k, v))) = runner::parse_env(s) {
        assert!(!k.is_empty() && !k.contains('\0') && !v.contains('\0'));
    }
});
