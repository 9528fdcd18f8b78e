//! Per-thread spare lists: things a request makes and drops (a timer, a
//! read buffer), kept by the thread for its next request instead.
//!
//! A proxy thread stays on its own runtime, so a thread-local list needs
//! no lock. Each list has a cap: one item per request in progress at a
//! time is what a thread uses, and the cap keeps a burst from being held
//! forever.

use std::cell::RefCell;
use std::thread::LocalKey;

/// A thread's spare list of `T`s.
pub type Spares<T> = RefCell<Vec<T>>;

/// A spare from `list`, if the thread has one.
pub fn take<T: 'static>(list: &'static LocalKey<Spares<T>>) -> Option<T> {
    // `try_with`: at thread exit the list may be gone.
    list.try_with(|spare| spare.try_borrow_mut().ok()?.pop())
        .ok()
        .flatten()
}

/// Keeps `item` in `list` for a next request, unless the list holds `cap`.
pub fn give<T: 'static>(list: &'static LocalKey<Spares<T>>, item: T, cap: usize) {
    // `try_borrow_mut`: a give from a drop inside a borrow of the list
    // (the item is dropped instead) must not panic.
    let _ = list.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut() {
            if spare.len() < cap {
                spare.push(item);
            }
        }
    });
}

/// How many spares `list` holds (tests).
#[cfg(test)]
pub fn count<T: 'static>(list: &'static LocalKey<Spares<T>>) -> usize {
    list.with_borrow(Vec::len)
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static LIST: Spares<u32> = const { RefCell::new(Vec::new()) };
    }

    #[test]
    fn a_list_gives_back_what_it_kept_up_to_its_cap() {
        assert_eq!(take(&LIST), None);
        give(&LIST, 1, 2);
        give(&LIST, 2, 2);
        give(&LIST, 3, 2);
        assert_eq!(count(&LIST), 2);
        assert_eq!(take(&LIST), Some(2));
        assert_eq!(take(&LIST), Some(1));
        assert_eq!(take(&LIST), None);
    }

    #[test]
    fn a_give_inside_a_borrow_drops_the_item_instead_of_panicking() {
        LIST.with_borrow_mut(|_held| give(&LIST, 7, 4));
        assert_eq!(take(&LIST), None);
    }
}
