//! Round-trip properties over generated inputs: NAR bytes → restored tree → NAR bytes is
//! the identity, and a store URI read into a spec and written back reads the same.

use std::io::Write;

use overlay_store::format::nar::NarWriter;
use overlay_store::spec::StoreSpec;
use overlay_store::store::fs::tree;
use proptest::prelude::*;

/// A file system object as a NAR describes it.
#[derive(Debug, Clone)]
enum Node {
    File { executable: bool, contents: Vec<u8> },
    Symlink(Vec<u8>),
    Dir(std::collections::BTreeMap<String, Node>),
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(executable, contents)| Node::File { executable, contents }),
        "[a-z/._ -]{1,40}".prop_map(|t| Node::Symlink(t.into_bytes())),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        proptest::collection::btree_map("[a-zA-Z0-9._+-]{1,12}".prop_filter("not . or ..", |n| n != "." && n != ".."), inner, 0..6)
            .prop_map(Node::Dir)
    })
}

fn write_node<W: Write>(w: &mut NarWriter<W>, n: &Node) -> std::io::Result<()> {
    match n {
        Node::File { executable, contents } => {
            w.strs(&["(", "type", "regular"])?;
            if *executable {
                w.strs(&["executable", ""])?;
            }
            w.str(b"contents")?;
            w.str(contents)?;
            w.str(b")")
        }
        Node::Symlink(t) => {
            w.strs(&["(", "type", "symlink", "target"])?;
            w.str(t)?;
            w.str(b")")
        }
        Node::Dir(entries) => {
            w.strs(&["(", "type", "directory"])?;
            for (name, child) in entries {
                w.strs(&["entry", "(", "name", name, "node"])?;
                write_node(w, child)?;
                w.str(b")")?;
            }
            w.str(b")")
        }
    }
}

fn nar_bytes(n: &Node) -> Vec<u8> {
    let mut w = NarWriter::new(Vec::new());
    w.magic().unwrap();
    write_node(&mut w, n).unwrap();
    w.into_inner()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn nar_restore_then_dump_is_the_identity(n in node()) {
        let bytes = nar_bytes(&n);
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("object");
        tree::restore(&mut &bytes[..], &at).unwrap();
        let again = tree::dump(&at, Vec::new()).unwrap();
        prop_assert!(again == bytes, "NAR of the restored tree differs ({} vs {} bytes)", again.len(), bytes.len());
    }

    #[test]
    fn a_truncated_nar_is_an_error_never_a_panic(n in node(), cut in any::<prop::sample::Index>()) {
        let bytes = nar_bytes(&n);
        let cut = cut.index(bytes.len());
        let dir = tempfile::tempdir().unwrap();
        prop_assert!(tree::restore(&mut &bytes[..cut], &dir.path().join("o")).is_err());
    }

    #[test]
    fn uri_to_spec_to_uri_reads_the_same(
        root in "/[a-z0-9 ,:ü_-]{1,30}",
        upper in "/[a-z0-9 ,:_-]{1,30}",
        check in any::<bool>(),
        read_only in any::<bool>(),
        overlay in any::<bool>(),
    ) {
        let enc = |s: &str| s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"/-_.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect::<String>();
        let uri = if overlay {
            format!("local-overlay://?root={}&lower-store={}&upper-layer={}&check-mount={check}", enc(&root), enc(&format!("{root}-lower")), enc(&upper))
        } else {
            format!("local?root={}&read-only={read_only}", enc(&root))
        };
        let spec = StoreSpec::from_uri(&uri).unwrap();
        let printed = spec.to_uri();
        let again = StoreSpec::from_uri(&printed).unwrap();
        prop_assert_eq!(again.to_uri(), printed.clone());
        prop_assert_eq!(&again.real, &spec.real);
        prop_assert_eq!(&again.state, &spec.state);
        prop_assert_eq!(again.check_mount, spec.check_mount);
        prop_assert_eq!(again.read_only, spec.read_only);
        prop_assert_eq!(again.upper_layer.clone(), spec.upper_layer.clone());
    }
}
