//! etcd v3.5's on-disk formats at rusd's edges: the bbolt database (`bbolt`) that
//! `Maintenance.Snapshot` streams and that an etcd data dir holds.

pub mod bbolt;

#[cfg(test)]
mod dump_tests {
    use super::bbolt::*;

    #[test]
    fn dump_reference() {
        let Ok(data) = std::fs::read("/tmp/bb/snap.db") else {
            return;
        };
        let r = Reader::open(data, "snap.db").unwrap();
        println!("{:?}", r.meta());
        for (name, root) in r.buckets().unwrap() {
            println!("bucket {} at {root}", String::from_utf8_lossy(&name));
            r.walk(&root, &mut |e| {
                println!(
                    "  {:02x?} = {:02x?} {}",
                    e.key,
                    e.value,
                    String::from_utf8_lossy(e.value)
                );
                Ok(())
            })
            .unwrap();
        }
        println!("free {:?}", free_pages(&r).unwrap());
    }
}
