package malformed

// Pending returns how many decoding failures g's codec has noted that no
// interceptor has taken yet; after every call has ended it must be 0.
func Pending(g *Guard) int64 { return g.count.Load() }
