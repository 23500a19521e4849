//! The host's interface addresses (getifaddrs(3)).

use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::ControlFlow;

/// One address of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    /// The interface's name (`eth0`).
    pub name: String,
    /// The address.
    pub ip: IpAddr,
    /// The interface is up and running, and not the loopback.
    pub usable: bool,
}

/// Call `visit` with the name, address and flags of each getifaddrs entry that has both, in the
/// kernel's order, until it breaks. The list is freed afterwards, so `visit` copies what it keeps.
fn for_each_entry(mut visit: impl FnMut(&CStr, &libc::sockaddr, u32) -> ControlFlow<()>) -> io::Result<()> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `list` is a valid place for the pointer; on success libc allocates a linked list
    // that stays valid until the freeifaddrs below.
    if unsafe { libc::getifaddrs(&raw mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a non-null node of the list getifaddrs returned, not yet freed.
        let node = unsafe { &*entry };
        entry = node.ifa_next;
        if node.ifa_addr.is_null() || node.ifa_name.is_null() {
            continue;
        }
        // SAFETY: both pointers are non-null and owned by the list, which outlives this call of
        // `visit`: `ifa_name` is NUL-terminated, `ifa_addr` points to at least a sockaddr.
        let (name, addr) = unsafe { (CStr::from_ptr(node.ifa_name), &*node.ifa_addr) };
        if visit(name, addr, node.ifa_flags).is_break() {
            break;
        }
    }
    // SAFETY: `list` came from a successful getifaddrs and is freed once; `visit` kept no
    // reference into it (the borrows above end with each call).
    unsafe { libc::freeifaddrs(list) };
    Ok(())
}

/// Every IPv4 and IPv6 address of every interface, in the kernel's order.
pub fn interface_addresses() -> io::Result<Vec<InterfaceAddress>> {
    let mut out = Vec::new();
    for_each_entry(|name, addr, flags| {
        let addr: *const libc::sockaddr = addr;
        // SAFETY: `addr` points to a sockaddr at least as long as its family says; we read the
        // family first and then only the struct of that family.
        let ip = unsafe {
            match i32::from((*addr).sa_family) {
                libc::AF_INET => {
                    let v4 = &*addr.cast::<libc::sockaddr_in>();
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let v6 = &*addr.cast::<libc::sockaddr_in6>();
                    IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr))
                }
                _ => return ControlFlow::Continue(()),
            }
        };
        let up = flags & (libc::IFF_UP as u32) != 0 && flags & (libc::IFF_RUNNING as u32) != 0;
        let usable = up && flags & (libc::IFF_LOOPBACK as u32) == 0;
        out.push(InterfaceAddress { name: name.to_string_lossy().into_owned(), ip, usable });
        ControlFlow::Continue(())
    })?;
    Ok(out)
}

/// The hardware (MAC) address of interface `name` in the calling thread's network namespace
/// (getifaddrs' `AF_PACKET` entry), or `NotFound`.
pub fn interface_mac(name: &str) -> io::Result<[u8; 6]> {
    let mut found = None;
    for_each_entry(|this, addr, _| {
        if i32::from(addr.sa_family) != libc::AF_PACKET || this.to_bytes() != name.as_bytes() {
            return ControlFlow::Continue(());
        }
        let addr: *const libc::sockaddr = addr;
        // SAFETY: the family is AF_PACKET, whose address is a sockaddr_ll.
        let link = unsafe { &*addr.cast::<libc::sockaddr_ll>() };
        found = (link.sll_halen == 6).then(|| {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&link.sll_addr[..6]);
            mac
        });
        ControlFlow::Break(())
    })?;
    found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("interface '{name}' has no MAC address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_is_listed_and_not_usable() {
        let addresses = interface_addresses().unwrap();
        let loopback = addresses.iter().find(|a| a.ip == IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
        assert!(!loopback.usable, "{loopback:?}");
    }

    #[test]
    fn the_loopback_has_no_mac_address_and_an_unknown_interface_none_either() {
        // The loopback's link address is all zeroes, six bytes long.
        assert_eq!(interface_mac("lo").ok(), Some([0; 6]));
        assert_eq!(interface_mac("nosuch0").map_err(|e| e.kind()), Err(io::ErrorKind::NotFound));
    }
}
